"""Audio and video decoded in worker processes, so decoding uses every core.

PyAV and torchaudio hold Python's GIL in many short steps, so threads
decoding audio or video barely run in parallel (1.2× on two threads here). A
:class:`DecodingProcesses` pool takes those modalities to processes started
from a clean interpreter (``forkserver``: no copy of a loaded model, no
threads forked mid-flight); the calling thread waits without the GIL. Images,
depth and thermal maps (Pillow releases the GIL while decoding), text and IMU
stay in the calling thread, where they cost less than the trip to a process.

Used by the inference server (``IB_DECODE_PROCESSES``) and by ``ib-ingest``
(``--decode-processes``: it pays where a worker runs several threads, as
Dataflow's Python workers do).
"""

from __future__ import annotations

import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor

import torch

from ..modalities import Modality
from . import Preprocessor

OFF_GIL = (Modality.AUDIO, Modality.VIDEO)


class DecodingProcesses:
    """A pool of ``processes`` decoders, warmed up (imports done) before first use.

    With 0 processes everything is decoded in the calling thread, so callers
    hold one of these whichever way they decode.
    """

    def __init__(self, processes: int = 0) -> None:
        if processes < 0:
            raise ValueError(f"decoding processes must be 0 or more, not {processes}")
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        if processes == 0:
            return
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_decoder,
        )
        for future in [self._pool.submit(_ready) for _ in range(processes)]:
            future.result()
        # Shut down when dropped, or at exit while the interpreter is still whole.
        self._finalizer = weakref.finalize(self, self._pool.shutdown, False, cancel_futures=True)

    def load_item(
        self,
        preprocessor: Preprocessor,
        modality: Modality,
        item: bytes | str,
        index: int = 0,
        deadline: float | None = None,
        inspected: bool = False,
    ) -> torch.Tensor:
        """``preprocessor.load_item`` — in a process for audio and video, here for the rest.

        ``deadline`` is ``time.monotonic()``'s, which processes on one machine share.
        """
        if self._pool is None or modality not in OFF_GIL:
            return preprocessor.load_item(modality, item, index, deadline, inspected)
        job = self._pool.submit(preprocessor.load_item, modality, item, index, deadline, inspected)
        return job.result()

    def close(self) -> None:
        if self._pool is not None:
            self._finalizer()


def _start_decoder() -> None:
    """Once per process: the imports, and one torch thread.

    Each process decodes one item at a time on one core; torch's default of a
    thread per core would put N processes × cores threads on the machine, and
    their spin-waiting cost more than the decoding (audio ran 4.6× slower so).
    """
    torch.set_num_threads(1)
    import ib_vectorizer.preprocess  # noqa: F401 - torch, PyAV, torchaudio


def _ready() -> None:
    """A no-op task: waiting for one per process means every process has started."""
