"""Payload models of the skill actions: what LangBot 0.5.0a2 sends and reads (reference §B.1, §D.14).

Requests ignore unknown keys and accept ``None`` where LangBot's server falls back to a default
(it reads them with ``data.get(key) or default``). Responses carry LangBot's fields plus ours
(``digest``, ``frontmatter``, ``file_count``, ``total_bytes``), which LangBot's client ignores.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import pydantic

from boxruntime.models import bounds
from boxruntime.models.base import Model, Request

# LangBot 0.7's rule for upload keys; LangBot 0.5's keys (``<sha256[:16]>-<uuid hex>.zip``) match it.
FILE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
# The most entries one box_list_skill_files answer may carry, whatever max_entries asks for.
MAX_LISTED_ENTRIES = 10_000


def check_file_key(value: str) -> str:
    if not FILE_KEY_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError("file_key must be 1-255 characters of letters, digits, '.', '_' or '-', without '..'")
    return value


def _none_as(default: Any) -> pydantic.BeforeValidator:
    """A before-validator that turns an explicit null into ``default`` (LangBot's ``or default``)."""

    def convert(value: Any) -> Any:
        return default if value is None else value

    return pydantic.BeforeValidator(convert)


NullAsEmpty = Annotated[str, _none_as("")]
NullAsDot = Annotated[str, _none_as(".")]
NullAsZipName = Annotated[str, _none_as("skill.zip")]
NullAsFalse = Annotated[bool, _none_as(False)]
NullAsNoPaths = Annotated[list[str], _none_as([])]

# Bounds (``boxruntime.models.bounds``): names, paths (relative ones too) and texts.
_Name = Annotated[str, pydantic.AfterValidator(lambda v: bounds.identifier(v, "name"))]
_Path = Annotated[str, pydantic.AfterValidator(lambda v: bounds.path_text(v, "path"))]
_Paths = Annotated[NullAsNoPaths, pydantic.AfterValidator(lambda v: bounds.path_list(v, "paths"))]
_Text = Annotated[str, pydantic.AfterValidator(lambda v: bounds.bounded_text(v, "text", bounds.MAX_TEXT_BYTES))]
_Count = Annotated[int, pydantic.Field(ge=0, le=bounds.MAX_COUNT)]
# One chunk of an upload: base64 of at most 8 MiB (a WebSocket message holds 16 MiB).
MAX_CHUNK_BASE64_CHARS = (8 << 20) // 3 * 4 + 4


class _Request(Request):
    # LangBot str()s what it is given, so a number where a string belongs is not an error.
    model_config = pydantic.ConfigDict(extra="ignore", coerce_numbers_to_str=True)


# ── the skill itself ─────────────────────────────────────────────────────


class Skill(Model):
    """A skill package: LangBot's eight public fields, then ours."""

    name: str
    display_name: str
    description: str
    instructions: str
    package_root: str
    entry_file: str
    created_at: dt.datetime
    updated_at: dt.datetime
    # Extensions: what exactly is installed, and how big it is.
    digest: str
    frontmatter: dict[str, Any] = pydantic.Field(default_factory=dict)
    file_count: int
    total_bytes: int

    @pydantic.field_serializer("created_at", "updated_at")
    def _iso(self, value: dt.datetime) -> str:
        # LangBot writes datetime.isoformat(): "+00:00", where pydantic would write "Z".
        return value.isoformat()


class SkillPreview(Skill):
    """A skill found in an uploaded zip; ``package_root`` is where it would be installed."""

    source_path: str


class SkillRef(Model):
    name: str


class SkillFileEntry(Model):
    path: str
    name: str
    is_dir: bool
    size: int | None


# ── responses ────────────────────────────────────────────────────────────


class SkillList(Model):
    skills: list[Skill]


class SkillPreviewList(Model):
    skills: list[SkillPreview]


class SkillResult(Model):
    skill: Skill | None


class SkillDeleted(Model):
    deleted: str


class SkillFileListing(Model):
    skill: SkillRef
    base_path: str
    entries: list[SkillFileEntry]
    truncated: bool


class SkillFileContent(Model):
    skill: SkillRef
    path: str
    content: str


class SkillFileWritten(Model):
    skill: SkillRef
    path: str
    bytes_written: int


class ChunkReceipt(Model):
    """LangBot answers ``{}``; the counters are ours and LangBot ignores them."""

    received_bytes: int
    complete: bool


# ── requests ─────────────────────────────────────────────────────────────


class SkillFields(_Request):
    """``box_create_skill``'s ``skill``. A field left out (or null) is filled from the package."""

    name: _Name = ""
    display_name: _Text | None = None
    description: _Text | None = None
    instructions: _Text | None = None
    package_root: _Path | None = None


class SkillUpdate(_Request):
    """``box_update_skill``'s ``skill``; ``model_fields_set`` tells "left out" from "set to null",
    and so does its wire form, which holds only the fields that were set."""

    name: _Name | None = None
    display_name: _Text | None = None
    description: _Text | None = None
    instructions: _Text | None = None
    package_root: _Path | None = None

    @pydantic.model_serializer(mode="wrap")
    def _only_set(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}


class SkillNameRequest(_Request):
    name: _Name


class CreateSkillRequest(_Request):
    skill: SkillFields


class UpdateSkillRequest(_Request):
    name: _Name
    skill: SkillUpdate


class ScanSkillRequest(_Request):
    path: _Path


class ListSkillFilesRequest(_Request):
    name: _Name
    path: Annotated[NullAsDot, pydantic.AfterValidator(lambda v: bounds.path_text(v, "path"))] = "."
    include_hidden: NullAsFalse = False
    max_entries: int = 200

    @pydantic.field_validator("max_entries")
    @classmethod
    def _bounded(cls, value: int) -> int:
        # LangBot takes any int (0 still lists one entry); a huge one must not list a whole disk.
        return min(max(value, 1), MAX_LISTED_ENTRIES)


class ReadSkillFileRequest(_Request):
    name: _Name
    path: _Path


class WriteSkillFileRequest(_Request):
    name: _Name
    path: _Path
    content: _Text = ""


_Subdir = Annotated[NullAsEmpty, pydantic.AfterValidator(lambda v: bounds.path_text(v, "path"))]


class PreviewSkillZipRequest(_Request):
    file_key: str
    filename: Annotated[NullAsZipName, pydantic.AfterValidator(lambda v: bounds.path_text(v, "filename"))] = "skill.zip"
    source_subdir: _Subdir = ""
    target_suffix: Annotated[NullAsEmpty, pydantic.AfterValidator(lambda v: bounds.identifier(v, "suffix"))] = "upload"

    @pydantic.field_validator("file_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_file_key(value)


class InstallSkillZipRequest(PreviewSkillZipRequest):
    source_paths: _Paths = pydantic.Field(default_factory=list)
    source_path: _Subdir = ""


class FileChunk(_Request):
    """One ``__file_chunk`` (reference §A.7). Sizes are checked by the upload store."""

    file_key: str
    file_length: _Count | None = None
    chunk_base64: str = pydantic.Field(max_length=MAX_CHUNK_BASE64_CHARS)
    chunk_index: int = pydantic.Field(ge=0, le=bounds.MAX_COUNT)
    chunk_amount: int = pydantic.Field(ge=1, le=bounds.MAX_COUNT)
    chunk_size: _Count | None = None

    @pydantic.field_validator("file_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_file_key(value)

    @pydantic.model_validator(mode="after")
    def _index_in_range(self) -> FileChunk:
        if self.chunk_index >= self.chunk_amount:
            raise ValueError(f"chunk_index {self.chunk_index} is out of range for chunk_amount {self.chunk_amount}")
        return self
