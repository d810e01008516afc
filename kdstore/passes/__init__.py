"""Model passes over the images of a .beton (inference.py): what `cache` runs with the teacher and
the student scorer and `train` run with the student, below both the writer (kdstore.cache) and
the reader (kdstore.loader), which stand side by side over the store."""
