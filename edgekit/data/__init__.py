"""Datasets: anything iterable of (inputs: dict[str, array], label). `ArrayDataset` is the in-memory one."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.spec import MASK_INPUT


@dataclass
class ArrayDataset:
    """Paired multimodal samples held as arrays: inputs[name][i] belong together with labels[i]."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    modalities: tuple[str, ...] = ("image", "audio", "text")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.inputs.items()}, int(self.labels[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def subset(self, idx) -> "ArrayDataset":
        idx = np.asarray(idx)
        return ArrayDataset({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx], self.modalities)

    def batches(self, batch_size: int):
        for s in range(0, len(self), batch_size):
            yield {k: v[s : s + batch_size] for k, v in self.inputs.items()}, self.labels[s : s + batch_size]

    def without(self, modality: str) -> "ArrayDataset":
        """The same samples with one modality missing: zeros in its input, 0 in its mask column."""
        j = self.modalities.index(modality)
        inputs = {k: v.copy() for k, v in self.inputs.items()}
        inputs[modality][:] = 0
        inputs[MASK_INPUT][:, j] = 0
        return ArrayDataset(inputs, self.labels, self.modalities)

    def save(self, path) -> None:
        from edgekit.io import atomic_write_npz

        atomic_write_npz(path, labels=self.labels, **self.inputs)

    @classmethod
    def load(cls, path) -> "ArrayDataset":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(arrays, arrays.pop("labels"))
