"""Loading a backup into an empty member: the dump streamed from the store, decompressed and fed to the flavour's
client without binary logging (the member's history starts at the backup's position, so it can replicate from
there), then the member seeded with the backup's GTIDs."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile

import zstandard

from .dump import Member, client_command, open_session
from .manifest import BackupManifest
from .storage import Store


class RestoreError(RuntimeError):
    """The backup could not be loaded; the member holds part of it at most and must be discarded."""


def restore_backup(store: Store, manifest: BackupManifest, member: Member) -> None:
    """Load the backup into ``member`` (which holds no data of its own and, on MySQL, no GTIDs yet) and make its
    executed GTIDs the backup's; RestoreError when the data object does not match its manifest or the client
    failed."""
    dialect = member.dialect
    if dialect.flavor != manifest.flavor:
        raise RestoreError(f"{manifest.name} is a {manifest.flavor} backup; {member.name} is {dialect.flavor}")
    digest = hashlib.sha256()
    size = 0
    with client_command(member, dialect.client_program) as command, tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [*command, "--binary-mode", "--init-command=SET sql_log_bin = 0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        assert process.stdin is not None
        try:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            for chunk in store.read(manifest.data):
                digest.update(chunk)
                size += len(chunk)
                process.stdin.write(decompressor.decompress(chunk))
            process.stdin.close()
            code = process.wait()
        except BrokenPipeError:
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if code != 0:
            errors.seek(0)
            message = " ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
            raise RestoreError(f"{member.name}: {dialect.client_program} failed ({code}): {message}")
    if size != manifest.size or digest.hexdigest() != manifest.sha256:
        raise RestoreError(f"{manifest.name}: the data object does not match its manifest (size or sha256)")
    with open_session(member) as session:
        for statement in dialect.seed_position(manifest.gtid):
            session.execute(statement)
