"""Output folders: the user's normal permissions, stale staging folders cleaned, inputs never overwritten."""

import os
import socket
import stat
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from compress.export import atomic_output, export_hf
from compress.export.folder import MARKER, check_holds_no_input, remove_stale_staging
from tests.conftest import tiny_bert


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_users_permissions_not_owner_only(tmp_path, tokenizer_dir):
    umask = os.umask(0o022)
    try:
        export_hf(tiny_bert(layers=1), AutoTokenizer.from_pretrained(tokenizer_dir), tmp_path / "hf")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "hf") == 0o755
    assert mode(tmp_path / "hf" / "model.safetensors") == 0o644  # safetensors writes 0600 by itself
    assert {mode(p) for p in (tmp_path / "hf").iterdir()} == {0o644}


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_left_by_a_killed_process_is_removed_and_a_live_ones_kept(tmp_path):
    host = socket.gethostname()
    killed = tmp_path / f".hf.{host}.{dead_pid()}.abc123.partial"
    live = tmp_path / f".hf.{host}.{os.getppid()}.def456.partial"  # pytest's parent: still running
    other_host = tmp_path / f".hf.elsewhere.{dead_pid()}.ghi789.partial"
    for folder in (killed, live, other_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half written")
    with atomic_output(tmp_path / "hf") as staging:
        (staging / "config.json").write_text("{}")
    assert not killed.exists()
    assert live.exists() and other_host.exists()
    assert (tmp_path / "hf" / MARKER).is_file()


def test_an_old_export_set_aside_by_a_killed_process_is_put_back(tmp_path):
    """Killed between moving the old export aside and moving the new one in: the next run restores it."""
    retired = tmp_path / f".hf.{socket.gethostname()}.{dead_pid()}.retired.old"
    retired.mkdir()
    (retired / "config.json").write_text('{"the": "old export"}')
    assert remove_stale_staging(tmp_path / "hf") == []
    assert (tmp_path / "hf" / "config.json").read_text() == '{"the": "old export"}'


def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    source = tmp_path / "run" / "stages" / "student" / "model"
    for output in (source, tmp_path / "run", tmp_path):
        with pytest.raises(ValueError, match=r"output: .* holds model .* choose an output folder outside it"):
            check_holds_no_input(output, {"model": source, "adapters": None})
    check_holds_no_input(tmp_path / "export", {"model": source})  # a sibling folder is fine


@pytest.mark.parametrize("failure", ["disk_full", "read_only", "safetensors_disk_full"])
def test_a_failed_write_names_the_output_and_the_fix_and_leaves_nothing(
    failure, tmp_path, tokenizer_dir, monkeypatch
):
    import errno

    from safetensors import SafetensorError

    errors = {
        "disk_full": OSError(errno.ENOSPC, "No space left on device"),
        "read_only": PermissionError(errno.EACCES, "Permission denied"),
        "safetensors_disk_full": SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        ),
    }

    def failing_write(*args, **kwargs):
        raise errors[failure]

    model = tiny_bert(layers=1)
    monkeypatch.setattr(model, "save_pretrained", failing_write)
    with pytest.raises(OSError, match=r"cannot write .*hf .*(free some space|choose a folder you can write)"):
        export_hf(model, AutoTokenizer.from_pretrained(tokenizer_dir), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
