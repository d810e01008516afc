"""Device and process plumbing every stage shares: host-device transfers, block-wise reads,
mixed precision, torchrun, the device choice, hashing and console output. Imports no other
stage of kdstore."""
