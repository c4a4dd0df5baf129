"""The skill actions of ``BoxClient``: LangBot 0.5's 11 actions (reference §B.1, §D.14) and the
``__file_chunk`` uploads they consume.

Skill zips travel as LangBot's client sends them (reference §A.7): ``__file_chunk`` calls of
16 KiB raw bytes each, base64-encoded, under a key ``<sha256[:16]>-<uuid hex>.zip``; then the
action that consumes the upload names that key.

The skill models are imported where they are used: most clients never touch skills, and
building those models is start-up time they would pay for nothing.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from boxruntime.errors import ActionCallError
from boxruntime.models import actions as a
from langbot_bridge.client_base import ClientBase

if TYPE_CHECKING:
    from boxruntime.models.skills import (
        ChunkReceipt,
        FileChunk,
        Skill,
        SkillFields,
        SkillFileContent,
        SkillFileListing,
        SkillFileWritten,
        SkillPreview,
        SkillResult,
        SkillUpdate,
    )

FILE_CHUNK_BYTES = 16 * 1024  # raw bytes per __file_chunk, before base64 (reference §A.7)


def upload_key(data: bytes, extension: str = "zip") -> str:
    """LangBot's upload key: ``<sha256[:16]>-<uuid hex>[.<extension>]``, new for every upload."""
    suffix = f".{extension.strip('.')}" if extension.strip(".") else ""
    return f"{hashlib.sha256(data).hexdigest()[:16]}-{uuid.uuid4().hex}{suffix}"


def file_chunks(data: bytes, file_key: str) -> Iterator[FileChunk]:
    """``data`` as ``__file_chunk`` payloads, in order; an empty file is one empty chunk."""
    from boxruntime.models.skills import FileChunk

    amount = max(1, -(-len(data) // FILE_CHUNK_BYTES))
    for index in range(amount):
        piece = data[index * FILE_CHUNK_BYTES : (index + 1) * FILE_CHUNK_BYTES]
        yield FileChunk(
            file_key=file_key,
            file_length=len(data),
            chunk_base64=base64.b64encode(piece).decode("ascii"),
            chunk_index=index,
            chunk_amount=amount,
            chunk_size=len(piece),
        )


class SkillCalls(ClientBase):
    """The skill store's actions, and uploads."""

    async def list_skills(self) -> list[Skill]:
        """``box_list_skills``: every installed skill."""
        from boxruntime.models import Empty

        return (await self._call(a.LIST_SKILLS, Empty())).skills

    async def get_skill(self, name: str) -> Skill | None:
        """The skill called ``name``, or None when there is none."""
        from boxruntime.models.skills import SkillNameRequest

        return (await self._call(a.GET_SKILL, SkillNameRequest(name=name))).skill

    async def create_skill(self, fields: SkillFields) -> Skill:
        """A new skill: empty, or the package at ``fields.package_root`` (adopted when it is in
        the store, copied in when it is elsewhere on the daemon's host)."""
        from boxruntime.models.skills import CreateSkillRequest

        return _present(await self._call(a.CREATE_SKILL, CreateSkillRequest(skill=fields)), a.CREATE_SKILL.name)

    async def update_skill(self, name: str, fields: SkillUpdate) -> Skill:
        """Rewrite the skill's SKILL.md with the fields that were set (renaming is refused)."""
        from boxruntime.models.skills import UpdateSkillRequest

        # Only the fields the caller set go on the wire (SkillUpdate's wire form): the daemon
        # tells "left out" from "set to null".
        reply = await self._call(a.UPDATE_SKILL, UpdateSkillRequest(name=name, skill=fields))
        return _present(reply, a.UPDATE_SKILL.name)

    async def delete_skill(self, name: str) -> None:
        """``box_delete_skill``: remove the skill's package from the store."""
        from boxruntime.models.skills import SkillNameRequest

        await self._call(a.DELETE_SKILL, SkillNameRequest(name=name))

    async def scan_skill_directory(self, path: str) -> Skill:
        """The one skill in a directory on the daemon's host (or at most two levels below it)."""
        from boxruntime.models.skills import ScanSkillRequest

        return await self._call(a.SCAN_SKILL_DIRECTORY, ScanSkillRequest(path=path))

    async def list_skill_files(
        self, name: str, path: str = ".", *, include_hidden: bool = False, max_entries: int = 200
    ) -> SkillFileListing:
        """One directory of the package (not recursive); ``truncated`` once ``max_entries`` is reached."""
        from boxruntime.models.skills import ListSkillFilesRequest

        request = ListSkillFilesRequest(name=name, path=path, include_hidden=include_hidden, max_entries=max_entries)
        return await self._call(a.LIST_SKILL_FILES, request)

    async def read_skill_file(self, name: str, path: str) -> SkillFileContent:
        """``box_read_skill_file``: one file of the package (text, up to 1 MiB)."""
        from boxruntime.models.skills import ReadSkillFileRequest

        return await self._call(a.READ_SKILL_FILE, ReadSkillFileRequest(name=name, path=path))

    async def write_skill_file(self, name: str, path: str, content: str) -> SkillFileWritten:
        """Write a UTF-8 file in the package, creating parent directories."""
        from boxruntime.models.skills import WriteSkillFileRequest

        return await self._call(a.WRITE_SKILL_FILE, WriteSkillFileRequest(name=name, path=path, content=content))

    async def upload_file(self, data: bytes, extension: str = "zip") -> str:
        """Send ``data`` with ``__file_chunk``; returns the key an action then consumes (once)."""
        key = upload_key(data, extension)
        receipt: ChunkReceipt | None = None
        for chunk in file_chunks(data, key):
            receipt = await self._call(a.FILE_CHUNK, chunk)
        if receipt is None or not receipt.complete or receipt.received_bytes != len(data):
            raise ActionCallError(f"the daemon did not confirm the whole upload of {len(data)} bytes: {receipt}")
        return key

    async def preview_skill_zip(
        self, data: bytes, filename: str = "skill.zip", *, source_subdir: str = "", target_suffix: str = "upload"
    ) -> list[SkillPreview]:
        """The skills a zip holds and where each would be installed; installs nothing."""
        from boxruntime.models.skills import PreviewSkillZipRequest

        key = await self.upload_file(data)
        request = PreviewSkillZipRequest(
            file_key=key, filename=filename, source_subdir=source_subdir, target_suffix=target_suffix
        )
        return (await self._call(a.PREVIEW_SKILL_ZIP, request)).skills

    async def install_skill_zip(
        self,
        data: bytes,
        filename: str,
        *,
        source_paths: Sequence[str] = (),
        source_subdir: str = "",
        target_suffix: str = "upload",
    ) -> list[Skill]:
        """Install the zip's skill, or those ``source_paths`` name when it holds several, at
        ``<skills>/<filename stem>[-<leaf>][-<target_suffix>]``; all or nothing."""
        from boxruntime.models.skills import InstallSkillZipRequest

        key = await self.upload_file(data)
        request = InstallSkillZipRequest(
            file_key=key,
            filename=filename,
            source_paths=list(source_paths),
            source_subdir=source_subdir,
            target_suffix=target_suffix,
        )
        return (await self._call(a.INSTALL_SKILL_ZIP, request)).skills


def _present(reply: SkillResult, action: str) -> Skill:
    if reply.skill is None:
        raise ActionCallError(f"unexpected reply to {action}: no skill")
    return reply.skill
