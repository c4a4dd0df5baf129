"""The 11 skill actions of LangBot 0.5.0a2 and ``__file_chunk`` (reference §A.7, §B.1).

Payload shapes are LangBot's server's, model by model. As in LangBot, every failure of an
action other than ``box_list_skills``/``box_get_skill`` is reported as ``BoxValidationError``
(its client maps nothing else for these). Store calls block on disk, so they run in a worker
thread; uploads are small appends and stay on the event loop.

Build one ``SkillActions`` per daemon (uploads must outlive a connection: LangBot may send the
chunks and the install on a reconnected socket) and add ``table()`` to each connection's
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

from boxruntime.action_table import ActionTable
from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.models import (
    ChunkReceipt,
    CreateSkillRequest,
    Empty,
    FileChunk,
    InstallSkillZipRequest,
    ListSkillFilesRequest,
    PreviewSkillZipRequest,
    ReadSkillFileRequest,
    ScanSkillRequest,
    Skill,
    SkillDeleted,
    SkillFileContent,
    SkillFileListing,
    SkillFileWritten,
    SkillList,
    SkillNameRequest,
    SkillPreviewList,
    SkillResult,
    UpdateSkillRequest,
    WriteSkillFileRequest,
)
from boxruntime.models import actions as a
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

    def table(self) -> ActionTable:
        table = ActionTable()
        table.unary(a.LIST_SKILLS, self.list_skills)
        table.unary(a.GET_SKILL, self.get_skill)
        table.unary(a.CREATE_SKILL, self.create_skill)
        table.unary(a.UPDATE_SKILL, self.update_skill)
        table.unary(a.DELETE_SKILL, self.delete_skill)
        table.unary(a.SCAN_SKILL_DIRECTORY, self.scan_skill_directory)
        table.unary(a.LIST_SKILL_FILES, self.list_skill_files)
        table.unary(a.READ_SKILL_FILE, self.read_skill_file)
        table.unary(a.WRITE_SKILL_FILE, self.write_skill_file)
        table.unary(a.PREVIEW_SKILL_ZIP, self.preview_skill_zip)
        table.unary(a.INSTALL_SKILL_ZIP, self.install_skill_zip)
        table.unary(a.FILE_CHUNK, self.file_chunk)
        return table

    def cleanup(self) -> int:
        """Expire idle uploads and remove stale staging directories; returns how many went."""
        return self.uploads.expire() + self.store.remove_stale_staging()

    async def list_skills(self, _: Empty) -> SkillList:
        return SkillList(skills=await anyio.to_thread.run_sync(self.store.list_skills))

    async def get_skill(self, request: SkillNameRequest) -> SkillResult:
        skill = await anyio.to_thread.run_sync(self.store.get_skill, request.name)
        return SkillResult(skill=skill)

    async def create_skill(self, request: CreateSkillRequest) -> SkillResult:
        with _as_validation_error(a.CREATE_SKILL.name):
            skill = await anyio.to_thread.run_sync(self.store.create, request.skill)
        return SkillResult(skill=skill)

    async def update_skill(self, request: UpdateSkillRequest) -> SkillResult:
        with _as_validation_error(a.UPDATE_SKILL.name):
            skill = await anyio.to_thread.run_sync(self.store.update, request.name, request.skill)
        return SkillResult(skill=skill)

    async def delete_skill(self, request: SkillNameRequest) -> SkillDeleted:
        with _as_validation_error(a.DELETE_SKILL.name):
            deleted = await anyio.to_thread.run_sync(self.store.delete, request.name)
        return SkillDeleted(deleted=deleted)

    async def scan_skill_directory(self, request: ScanSkillRequest) -> Skill:
        with _as_validation_error(a.SCAN_SKILL_DIRECTORY.name):
            # Not wrapped: LangBot returns the skill object itself here.
            return await anyio.to_thread.run_sync(self.store.scan, request.path)

    async def list_skill_files(self, request: ListSkillFilesRequest) -> SkillFileListing:
        with _as_validation_error(a.LIST_SKILL_FILES.name):
            listing = await anyio.to_thread.run_sync(
                functools.partial(
                    self.store.list_files,
                    request.name,
                    request.path,
                    include_hidden=request.include_hidden,
                    max_entries=request.max_entries,
                )
            )
        return listing

    async def read_skill_file(self, request: ReadSkillFileRequest) -> SkillFileContent:
        with _as_validation_error(a.READ_SKILL_FILE.name):
            return await anyio.to_thread.run_sync(self.store.read_file, request.name, request.path)

    async def write_skill_file(self, request: WriteSkillFileRequest) -> SkillFileWritten:
        with _as_validation_error(a.WRITE_SKILL_FILE.name):
            return await anyio.to_thread.run_sync(self.store.write_file, request.name, request.path, request.content)

    async def preview_skill_zip(self, request: PreviewSkillZipRequest) -> SkillPreviewList:
        with _as_validation_error(a.PREVIEW_SKILL_ZIP.name), self.uploads.consume(request.file_key) as archive:
            previews = await anyio.to_thread.run_sync(
                functools.partial(
                    self.store.preview_zip,
                    archive,
                    filename=request.filename,
                    source_subdir=request.source_subdir,
                    target_suffix=request.target_suffix,
                )
            )
        return SkillPreviewList(skills=previews)

    async def install_skill_zip(self, request: InstallSkillZipRequest) -> SkillList:
        with _as_validation_error(a.INSTALL_SKILL_ZIP.name), self.uploads.consume(request.file_key) as archive:
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
        return SkillList(skills=skills)

    async def file_chunk(self, chunk: FileChunk) -> ChunkReceipt:
        return self.uploads.accept(chunk)
