"""The 11 skill actions of LangBot 0.5.0a2 and ``__file_chunk`` (reference §A.7, §B.1).

Payload shapes are LangBot's server's, model by model. As in LangBot, every failure of an
action other than ``box_list_skills``/``box_get_skill`` is reported as ``BoxValidationError``
(its client maps nothing else for these). Store calls block on disk, so they run in a worker
thread; uploads are small appends and stay on the event loop.

Build one ``SkillActions`` per daemon (uploads must outlive a connection: LangBot may send the
chunks and the install on a reconnected socket) and merge ``table()`` into each connection's
action table; call ``cleanup()`` periodically from the event loop. Pass ``skills_dir`` as a
callable (``lambda: settings.skills_dir``) to follow ``box_init`` changing the root.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio

from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.models import (
    CreateSkillRequest,
    FileChunk,
    InstallSkillZipRequest,
    ListSkillFilesRequest,
    PreviewSkillZipRequest,
    ReadSkillFileRequest,
    ScanSkillRequest,
    SkillDeleted,
    SkillList,
    SkillNameRequest,
    SkillPreviewList,
    SkillResult,
    UpdateSkillRequest,
    WriteSkillFileRequest,
)
from boxruntime.payloads import dump, parse
from boxruntime.protocol import ActionHandler, Payload
from boxruntime.skills.store import SkillStore
from boxruntime.skills.uploads import UploadStore

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _as_validation_error(action: str) -> Iterator[None]:
    """LangBot reports any failure of these actions as ``BoxValidationError: <message>``."""
    try:
        yield
    except BoxValidationError:
        raise
    except Exception as exc:
        if not isinstance(exc, BoxError):
            log.warning("%s failed: %r", action, exc, exc_info=not isinstance(exc, OSError))
        raise BoxValidationError(str(exc) or type(exc).__name__) from exc


class SkillActions:
    def __init__(
        self,
        skills_dir: Path | Callable[[], Path],
        uploads_dir: Path,
        *,
        store: SkillStore | None = None,
        uploads: UploadStore | None = None,
    ) -> None:
        self.store = store or SkillStore(skills_dir)
        self.uploads = uploads or UploadStore(uploads_dir)

    def table(self) -> dict[str, ActionHandler]:
        return {
            "box_list_skills": self.list_skills,
            "box_get_skill": self.get_skill,
            "box_create_skill": self.create_skill,
            "box_update_skill": self.update_skill,
            "box_delete_skill": self.delete_skill,
            "box_scan_skill_directory": self.scan_skill_directory,
            "box_list_skill_files": self.list_skill_files,
            "box_read_skill_file": self.read_skill_file,
            "box_write_skill_file": self.write_skill_file,
            "box_preview_skill_zip": self.preview_skill_zip,
            "box_install_skill_zip": self.install_skill_zip,
            "__file_chunk": self.file_chunk,
        }

    def cleanup(self) -> int:
        """Expire idle uploads and remove stale staging directories; returns how many went."""
        return self.uploads.expire() + self.store.remove_stale_staging()

    async def list_skills(self, _: Payload) -> Payload:
        return dump(SkillList(skills=await anyio.to_thread.run_sync(self.store.list_skills)))

    async def get_skill(self, data: Payload) -> Payload:
        request = parse(SkillNameRequest, data)
        skill = await anyio.to_thread.run_sync(self.store.get_skill, request.name)
        return dump(SkillResult(skill=skill))

    async def create_skill(self, data: Payload) -> Payload:
        with _as_validation_error("box_create_skill"):
            request = parse(CreateSkillRequest, data)
            skill = await anyio.to_thread.run_sync(self.store.create, request.skill)
        return dump(SkillResult(skill=skill))

    async def update_skill(self, data: Payload) -> Payload:
        with _as_validation_error("box_update_skill"):
            request = parse(UpdateSkillRequest, data)
            skill = await anyio.to_thread.run_sync(self.store.update, request.name, request.skill)
        return dump(SkillResult(skill=skill))

    async def delete_skill(self, data: Payload) -> Payload:
        with _as_validation_error("box_delete_skill"):
            request = parse(SkillNameRequest, data)
            deleted = await anyio.to_thread.run_sync(self.store.delete, request.name)
        return dump(SkillDeleted(deleted=deleted))

    async def scan_skill_directory(self, data: Payload) -> Payload:
        with _as_validation_error("box_scan_skill_directory"):
            request = parse(ScanSkillRequest, data)
            skill = await anyio.to_thread.run_sync(self.store.scan, request.path)
        # Not wrapped: LangBot returns the skill object itself here.
        return dump(skill)

    async def list_skill_files(self, data: Payload) -> Payload:
        with _as_validation_error("box_list_skill_files"):
            request = parse(ListSkillFilesRequest, data)
            listing = await anyio.to_thread.run_sync(
                functools.partial(
                    self.store.list_files,
                    request.name,
                    request.path,
                    include_hidden=request.include_hidden,
                    max_entries=request.max_entries,
                )
            )
        return dump(listing)

    async def read_skill_file(self, data: Payload) -> Payload:
        with _as_validation_error("box_read_skill_file"):
            request = parse(ReadSkillFileRequest, data)
            content = await anyio.to_thread.run_sync(self.store.read_file, request.name, request.path)
        return dump(content)

    async def write_skill_file(self, data: Payload) -> Payload:
        with _as_validation_error("box_write_skill_file"):
            request = parse(WriteSkillFileRequest, data)
            written = await anyio.to_thread.run_sync(self.store.write_file, request.name, request.path, request.content)
        return dump(written)

    async def preview_skill_zip(self, data: Payload) -> Payload:
        with _as_validation_error("box_preview_skill_zip"):
            request = parse(PreviewSkillZipRequest, data)
            with self.uploads.consume(request.file_key) as archive:
                previews = await anyio.to_thread.run_sync(
                    functools.partial(
                        self.store.preview_zip,
                        archive,
                        filename=request.filename,
                        source_subdir=request.source_subdir,
                        target_suffix=request.target_suffix,
                    )
                )
        return dump(SkillPreviewList(skills=previews))

    async def install_skill_zip(self, data: Payload) -> Payload:
        with _as_validation_error("box_install_skill_zip"):
            request = parse(InstallSkillZipRequest, data)
            with self.uploads.consume(request.file_key) as archive:
                skills = await anyio.to_thread.run_sync(
                    functools.partial(
                        self.store.install_zip,
                        archive,
                        filename=request.filename,
                        source_paths=request.source_paths,
                        source_path=request.source_path,
                        source_subdir=request.source_subdir,
                        target_suffix=request.target_suffix,
                    )
                )
        return dump(SkillList(skills=skills))

    async def file_chunk(self, data: Payload) -> Payload:
        return dump(self.uploads.accept(parse(FileChunk, data)))
