"""`python -m kdstore ...` (also what torchrun runs): the same commands as the `kdstore` script."""

from kdstore.cli.main import main

if __name__ == "__main__":
    main()
