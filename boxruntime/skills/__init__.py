"""The skill store: packages (a folder with SKILL.md plus scripts) under one managed root.

``SkillActions`` serves LangBot 0.5.0a2's 11 skill actions and ``__file_chunk``; ``SkillStore``
holds the semantics; ``archive`` makes uploaded zips safe; ``manifest`` names each revision by
a content digest; ``uploads`` stages chunked uploads.
"""

from boxruntime.models import Skill, SkillPreview
from boxruntime.skills.actions import SkillActions
from boxruntime.skills.archive import ZipLimits
from boxruntime.skills.manifest import ManifestLimits
from boxruntime.skills.store import SkillStore
from boxruntime.skills.uploads import UploadLimits, UploadStore

__all__ = [
    "ManifestLimits",
    "Skill",
    "SkillActions",
    "SkillPreview",
    "SkillStore",
    "UploadLimits",
    "UploadStore",
    "ZipLimits",
]
