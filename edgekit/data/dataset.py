"""The in-memory dataset: paired multimodal samples as arrays (edgekit.data's contract type)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ArrayDataset:
    """Paired multimodal samples held as arrays: inputs[name][i] belong together with labels[i]."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    modalities: tuple[str, ...] = ("image", "audio", "text")
    # how a modality is absent for the model these arrays feed (edgekit.data.missing.MissingPolicy); None: the
    # reference convention (an input named like each modality + modality_mask), or never missing without a mask
    missing: object = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.inputs.items()}, int(self.labels[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def subset(self, idx) -> "ArrayDataset":
        idx = np.asarray(idx)
        return ArrayDataset({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx], self.modalities, self.missing)

    def batches(self, batch_size: int):
        for s in range(0, len(self), batch_size):
            yield {k: v[s : s + batch_size] for k, v in self.inputs.items()}, self.labels[s : s + batch_size]

    @property
    def missing_policy(self):
        from edgekit.data.missing import MissingPolicy

        return MissingPolicy.for_dataset(self)

    def without(self, modality: str) -> "ArrayDataset":
        """The same samples with one modality missing, the way the model takes it (see edgekit.data.missing)."""
        return self.missing_policy.drop(self, modality)

    def save(self, path) -> None:
        from edgekit.io import atomic_write_npz

        atomic_write_npz(path, labels=self.labels, **self.inputs)

    @classmethod
    def load(cls, path) -> "ArrayDataset":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(arrays, arrays.pop("labels"))
