"""Run one write of DETR Studio under a file-size limit, as a full disk would stop it (tests/test_faults.py).

    python tests/fault_writes.py version|export|backup DATA_DIR DATASET OUT LIMIT_BYTES

The limit is the kernel's (RLIMIT_FSIZE): a write past it fails with EFBIG in the real write call,
like ENOSPC on a full disk. Prints the error message the user would see and exits 3, or exits 0
when the write fit.
"""

import resource
import signal
import sys
from pathlib import Path



def main() -> int:
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    from conftest import save_tiny_model
    from datasets.coco import CocoError, export_reviewed
    from datasets.database import configure_fiftyone
    from training.backup import BackupError, backup
    from training.registry import Registry, RegistryError

    kind, data_dir, dataset, out, limit = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
    configure_fiftyone(data_dir)
    from datasets.review import ReviewStore

    store = ReviewStore.open(dataset, data_dir)
    registry = Registry(data_dir / "models")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        if kind == "version":
            registry.add(lambda directory: save_tiny_model(directory, "detr"), {"base": "test"})
        elif kind == "export":
            export_reviewed(store.reviewed_view(), out, store.labels)
        else:
            backup(store, registry, out)
    except (RegistryError, CocoError, BackupError) as error:
        print(error)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
