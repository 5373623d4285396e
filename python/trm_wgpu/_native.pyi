"""Type stubs of trm_wgpu's Rust extension (``trm_wgpu._native``)."""

import os
from typing import Any, Dict, List, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]

class TrmError(Exception):
    """An error of trm-wgpu: a bad checkpoint, input or option, or a GPU
    fault. The message is the crate's (the one ``trm`` prints)."""

class InputError(TrmError):
    """A bad input or option: token ids outside the vocabulary, puzzle
    identifiers outside the table, shapes, an option combination that
    ``trm run`` refuses."""

class Model:
    """A loaded TRM (or HRM) checkpoint, ready to solve.

    Engines are built on first use and kept, one per backend and engine
    options: the first solve on a GPU compiles its pipelines, later ones
    reuse them. Solves release the GIL; solves on one engine run one at a
    time, solves on different engines may run in parallel threads.
    """

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration, with the field names of ``all_config.yaml``
        (``seq_len``, ``hidden_size``, ``H_cycles``, ...)."""
    @property
    def precision(self) -> str:
        """The network's precision: ``"f32"``, ``"f16"``, ``"bf16"`` or
        ``"int8"``."""
    @property
    def parameter_count(self) -> int: ...
    @property
    def seq_len(self) -> int:
        """Tokens per puzzle: ``inputs`` is ``[B, seq_len]``."""
    @property
    def vocab_size(self) -> int:
        """Token ids are ``0 .. vocab_size - 1``."""
    @property
    def num_puzzle_identifiers(self) -> int:
        """Puzzle identifiers are ``0 .. num_puzzle_identifiers - 1``."""
    @property
    def path(self) -> str:
        """The checkpoint file it was loaded from."""
    @property
    def ignored_tensors(self) -> List[str]:
        """Tensors the configuration does not use (``allow_unexpected``)."""
    def solve(
        self,
        inputs: npt.ArrayLike,
        puzzle_identifiers: Optional[npt.ArrayLike] = None,
        backend: str = "auto",
        steps: Optional[int] = None,
        halt: bool = False,
        *,
        adapter: Optional[str] = None,
        threads: Optional[int] = None,
        schedule: str = "auto",
        activations: str = "f32",
        task: Optional[str] = None,
        augment: Optional[int] = None,
        select: str = "q-halt",
        seed: int = 0,
        trajectories: Optional[int] = None,
        noise: Optional[float] = None,
        noise_on: str = "z_L",
        slots: Optional[int] = None,
        batch: Optional[int] = None,
    ) -> Dict[str, np.ndarray]:
        """Solve a batch of puzzles, as ``trm run`` does.

        ``inputs``: integer token ids ``[B, seq_len]`` (any integer dtype);
        ``puzzle_identifiers``: integers ``[B]`` (default 0 for every
        puzzle). Other dtypes raise TypeError; ids outside the model's
        ranges raise InputError.

        ``backend``: ``"cpu"``; ``"gpu"`` (any API); ``"vulkan"``,
        ``"metal"``, ``"dx12"`` or ``"gl"``; ``"auto"`` (the GPU when an
        adapter can run the model, else the CPU with a RuntimeWarning
        saying why). ``gpu`` and ``auto`` honour ``WGPU_BACKEND``.

        The other options are ``trm run``'s flags (``--noise-on`` is
        ``noise_on``): ``steps`` ACT steps (default the model's
        ``halt_max_steps``); ``halt`` early halting; ``adapter`` (a GPU
        adapter name's substring); ``threads`` (CPU threads); ``schedule``
        (``"fused"``, ``"spread"``, ``"auto"``); ``activations``
        (``"f32"``, or ``"matched"`` for int8 weights on the CPU);
        augmentation voting: ``task`` (``"sudoku"``, ``"maze"``, ``"arc"``),
        ``augment`` K variants, ``select`` (``"q-halt"``, ``"vote"``,
        ``"verifier"``), ``seed``; noisy trajectories: ``trajectories`` K
        with ``noise`` sigma on ``noise_on`` (``"z_L"``, ``"z_H"``,
        ``"both"``); streaming: ``slots`` N puzzles in flight (with
        ``halt``); ``batch`` N puzzles per solve.

        Returns the arrays of ``trm run``'s output file:
        ``logits`` float32 ``[B, seq_len, vocab]``, ``q_halt_logits`` and
        ``q_continue_logits`` float32 ``[B]``, ``z_H`` and ``z_L`` float32
        ``[B, S, D]`` (the final carry; absent with ``augment`` or
        ``trajectories`` above 1), ``steps`` int32 ``[B]``; with
        ``augment`` or ``trajectories`` also ``predictions`` int32
        ``[B, seq_len]`` (the chosen answers, in each puzzle's frame),
        ``selected`` int32 ``[B]`` and ``agreement`` float32 ``[B]``.
        """
    def describe(
        self,
        backend: str = "auto",
        *,
        adapter: Optional[str] = None,
        threads: Optional[int] = None,
        schedule: str = "auto",
        activations: str = "f32",
    ) -> str:
        """The engine ``solve`` runs on with these options (building it if
        needed), e.g. ``"gpu: llvmpipe (...) on vulkan"`` or ``"cpu: 2
        threads"``."""

def load(
    path: _Path,
    precision: Optional[str] = "f32",
    *,
    config: Optional[_Path] = None,
    dataset: Optional[_Path] = None,
    allow_unexpected: bool = False,
) -> Model:
    """Load a checkpoint.

    ``path``: the project's safetensors file (configuration in its header),
    or the authors' ``step_N`` file written by ``torch.save`` (read without
    PyTorch), or a directory of ``step_N`` files (the newest is loaded).
    An official checkpoint's configuration is the ``arch`` section of its
    ``all_config.yaml``, by default the one beside it (``config=`` names
    another); the data set's ``dataset.json`` (``dataset=``, by default the
    one beside it if any) gives ``seq_len``, ``vocab_size`` and the number
    of puzzle identifiers, which are otherwise read from the tensor shapes.

    ``precision``: the network's weights at ``"f32"`` (default), ``"f16"``,
    ``"bf16"`` or ``"int8"``; ``None`` keeps them as stored.
    """

def adapters(backend: str = "gpu") -> List[Dict[str, Any]]:
    """Every adapter wgpu finds on ``backend`` (``"gpu"``: every API;
    ``"vulkan"``, ``"metal"``, ``"dx12"``, ``"gl"``), most capable first:
    ``name``, ``api``, ``device_type``, ``driver``, limits, and
    ``unsuitable`` (``None`` when the GPU engine runs there, else why not).
    """
