"""Import bitsandbytes without its call to the Hugging Face Hub.

On a CPU with AVX512-BF16, `import bitsandbytes` (0.50) asks the Hub, through the `kernels` package,
for an optimised 4-bit kernel ("kernels-community/quantization-bitsandbytes") and checks its
publisher: a DNS lookup and a connection from a server that should reach nothing but its clients
(tests/reliability/test_no_telemetry.py). transformers (loading any model) and peft (any LoRA adapter)
import bitsandbytes whenever it is installed, and sentence-transformers imports both: every process of
ours would trigger it (two DNS lookups per process, strace). embedserve/backends/__init__.py, through
which every model load passes before any sentence-transformers import, does the import here first, once, with the Hub switched to
offline mode for its duration (kernels then skips the lookup and bitsandbytes keeps its own CPU
kernels); after it, the module is cached and later imports do nothing. A training job's process is
offline as a whole instead (training/run.py's main).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading

_LOCK = threading.Lock()


def import_bitsandbytes_offline() -> None:
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    with _LOCK:
        if "bitsandbytes" in sys.modules:
            return
        from huggingface_hub import constants

        # Its "no kernel from the Hub" warnings say nothing a user of ours can act on.
        loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
        levels = [logger.level for logger in loggers]
        previous, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
        try:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            import bitsandbytes  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken native library: peft then does without it
            pass
        finally:
            constants.HF_HUB_OFFLINE = previous
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
