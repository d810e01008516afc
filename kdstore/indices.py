"""Two kinds of int64 index arrays that must never be mixed up.

- `SampleIds`: a sample's identity in its dataset. teacher.h5's `curriculum` and `inverse`, a
  run's saved orders, and every batch's `ids` are sample ids.
- `Positions`: a row of a split's .beton (and of teacher.h5's per-sample arrays). An epoch's
  order, the teacher rows a batch looks up and the stored views are indexed by position.

They coincide only while a split holds its dataset in order; a held-out split (`cache
--split-part holdout`) or an imagefolder written in another order does not. `store.Split.positions`
turns ids into positions; `store.Split.sample_id[positions]` turns positions into ids. Both are
plain numpy arrays at run time; the types let mypy catch one passed for the other."""

from __future__ import annotations

from typing import NewType

import numpy as np

SampleIds = NewType("SampleIds", np.ndarray)
Positions = NewType("Positions", np.ndarray)
