"""The method's maths (docs/method.md) as small pure functions over arrays: the losses, the
curriculum, pacing, the KD weight lambda, the variants and their orderings, and the sparse forms
of a stored teacher target. No files, no models, no devices chosen here."""
