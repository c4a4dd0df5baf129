"""The action catalogue: every action the daemon serves, declared once.

Each entry names an action as it goes on the wire (LangBot's strings, reference §A.7, §B.1,
§B.2, and ours), the models of its request and of its answer (or of the items it streams), its
kind under LangBot 0.7's tenancy rules, how long our client waits for it and how long LangBot's
does. The daemon binds one handler to each entry (``boxruntime.action_table``), which parses
requests and dumps answers with these models; the bridge's ``BoxClient`` calls through the same
entries. To add an action: an entry here, its handler in the daemon's table, its client method.

Actions of the protocol itself that the Peer serves and sends on its own (``__cancel_action``)
are not entries. Models are named by functions called on first use: importing the catalogue
loads no model module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from boxruntime import models as m
from boxruntime.models.action_kinds import Action, Kind, Payload, Shape, Streamed, Unary, model, one_of, tagged

if TYPE_CHECKING:
    from boxruntime.models import (
        BackendInfo,
        ExecStarted,
        ManagedBackendInfo,
        OutputChunk,
        ReadinessReport,
        RuntimeStatus,
        StreamedResult,
    )

H, T, S = Kind.HOST_CONTROL, Kind.TENANT, Kind.SANDBOX

# How long our client waits (reference §E.7 gives LangBot's; ours are longer where our daemon may
# do more). DEFAULT is LangBot's default RPC timeout, and the Peer's.
DEFAULT = 15.0
SESSION_START = 120.0  # creating a sandbox: image resolution, container, agent start
DELETE = 60.0
PROCESS = 60.0  # starting or stopping (SIGTERM, grace, SIGKILL) a managed process
SHUTDOWN = 120.0
FS = 60.0  # up to 8 MiB each way
SKILL = 60.0  # a store change copies and hashes a package
PREVIEW = 60.0  # LangBot's, for box_preview_skill_zip
INSTALL = 120.0  # LangBot's, for box_install_skill_zip
# Input is answered once the command has read it: as long as the command takes, bounded by its
# own end (which fails the call).
INPUT = 24 * 3600.0

EMPTY = model(lambda: m.Empty)
SESSION_REF = model(lambda: m.SessionIdRequest)
PROCESS_REF = model(lambda: m.ProcessRef)
SKILL_NAME = model(lambda: m.SkillNameRequest)
EXEC_ITEMS: Shape[OutputChunk | StreamedResult] = Shape(lambda: tagged(m.OutputChunk, m.StreamedResult))

# ── the protocol's common actions (§A.7) ─────────────────────────────────

PING = Unary("__ping", EMPTY, EMPTY, H, timeout=DEFAULT, langbot_timeout=DEFAULT)
FILE_CHUNK = Unary(
    "__file_chunk",
    model(lambda: m.FileChunk),
    model(lambda: m.ChunkReceipt),
    H,
    timeout=DEFAULT,
    langbot_timeout=DEFAULT,
)

# ── the runtime (§B.1, §B.2) ─────────────────────────────────────────────

# The request is any subset of LangBot's ``box`` config section (§D.1), checked as it is applied.
INIT = Unary(
    "box_init",
    Shape[Payload](lambda: Payload),
    model(lambda: m.Initialized),
    H,
    timeout=DEFAULT,
    langbot_timeout=DEFAULT,
)
# Under admission, health is LangBot 0.7's readiness object and backend info carries it.
_HEALTH: Shape[ReadinessReport | BackendInfo] = Shape(lambda: one_of(m.ReadinessReport, m.BackendInfo))
_BACKEND: Shape[ManagedBackendInfo | BackendInfo] = Shape(lambda: one_of(m.ManagedBackendInfo, m.BackendInfo))
HEALTH = Unary("box_health", EMPTY, _HEALTH, H, timeout=DEFAULT, langbot_timeout=DEFAULT)
BACKEND_INFO = Unary("box_get_backend_info", EMPTY, _BACKEND, H, timeout=DEFAULT, langbot_timeout=DEFAULT)
# A LangBot 0.7 request sees its placement's counts, the limits and its workspace's capacity.
_STATUS: Shape[RuntimeStatus] = Shape(lambda: one_of(m.TenantRuntimeStatus, m.RuntimeStatus))
STATUS = Unary("box_status", EMPTY, _STATUS, T, timeout=DEFAULT, langbot_timeout=DEFAULT)
SHUTDOWN_SESSIONS = Unary("box_shutdown", EMPTY, EMPTY, H, timeout=SHUTDOWN, langbot_timeout=DEFAULT)
RELAY_INFO = Unary("box_relay_info", EMPTY, model(lambda: m.RelayInfo), H, timeout=DEFAULT)  # ours: about the daemon

# ── commands ─────────────────────────────────────────────────────────────

EXEC = Unary(
    "box_exec", model(lambda: m.BoxSpec), model(lambda: m.ExecResult), S, timeout=SESSION_START, langbot_timeout=300.0
)
EXEC_STREAM = Streamed("box_exec_stream", model(lambda: m.BoxSpec), EXEC_ITEMS, S, timeout=SESSION_START)
# Interactive exec (ours): the input, resize and signal reach a command of the same connection.
_INTERACTIVE_ITEMS: Shape[ExecStarted | OutputChunk | StreamedResult] = Shape(
    lambda: tagged(m.ExecStarted, m.OutputChunk, m.StreamedResult)
)
# It runs a command in a sandbox: under admission it needs a grant like box_exec (kind S).
EXEC_INTERACTIVE = Streamed(
    "box_exec_interactive", model(lambda: m.InteractiveExecRequest), _INTERACTIVE_ITEMS, S, timeout=SESSION_START
)
EXEC_INPUT = Unary("box_exec_input", model(lambda: m.ExecInputRequest), model(lambda: m.InputWritten), T, timeout=INPUT)
EXEC_RESIZE = Unary("box_exec_resize", model(lambda: m.ExecResizeRequest), EMPTY, T, timeout=DEFAULT)
EXEC_SIGNAL = Unary("box_exec_signal", model(lambda: m.ExecSignalRequest), EMPTY, T, timeout=DEFAULT)

# ── sessions and managed processes ───────────────────────────────────────

# LangBot 0.7 waits 60 s for a session (0.5: 15 s).
CREATE_SESSION = Unary(
    "box_create_session",
    model(lambda: m.BoxSpec),
    model(lambda: m.SessionInfo),
    S,
    timeout=SESSION_START,
    langbot_timeout=60.0,
)
GET_SESSION = Unary(
    "box_get_session", SESSION_REF, model(lambda: m.SessionDetails), S, timeout=DEFAULT, langbot_timeout=DEFAULT
)
GET_SESSIONS = Unary(
    "box_get_sessions", EMPTY, model(lambda: m.SessionList), S, timeout=DEFAULT, langbot_timeout=DEFAULT
)
DELETE_SESSION = Unary(
    "box_delete_session", SESSION_REF, model(lambda: m.SessionDeleted), S, timeout=DELETE, langbot_timeout=30.0
)
START_PROCESS = Unary(
    "box_start_managed_process",
    model(lambda: m.StartProcessRequest),
    model(lambda: m.ManagedProcessInfo),
    S,
    timeout=PROCESS,
    langbot_timeout=30.0,
)
GET_PROCESS = Unary(
    "box_get_managed_process",
    PROCESS_REF,
    model(lambda: m.ManagedProcessInfo),
    S,
    timeout=DEFAULT,
    langbot_timeout=DEFAULT,
)
STOP_PROCESS = Unary(
    "box_stop_managed_process", PROCESS_REF, model(lambda: m.ProcessStopped), S, timeout=PROCESS, langbot_timeout=30.0
)

# ── files (ours, ``box_fs_*``) ────────────────────────────────────────────

FS_READ = Unary("box_fs_read", model(lambda: m.FsReadRequest), model(lambda: m.FsReadResult), S, timeout=FS)
FS_WRITE = Unary("box_fs_write", model(lambda: m.FsWriteRequest), model(lambda: m.FsWriteResult), S, timeout=FS)
FS_LIST = Unary("box_fs_list", model(lambda: m.FsListRequest), model(lambda: m.FsListResult), S, timeout=FS)
FS_STAT = Unary("box_fs_stat", model(lambda: m.FsRequest), model(lambda: m.FsStatResult), S, timeout=FS)
FS_REMOVE = Unary("box_fs_remove", model(lambda: m.FsRemoveRequest), model(lambda: m.FsRemoveResult), S, timeout=FS)

# ── the skill store (LangBot 0.5; 0.7 has none): about the daemon, so host control ──

LIST_SKILLS = Unary("box_list_skills", EMPTY, model(lambda: m.SkillList), H, timeout=SKILL, langbot_timeout=DEFAULT)
GET_SKILL = Unary("box_get_skill", SKILL_NAME, model(lambda: m.SkillResult), H, timeout=SKILL, langbot_timeout=DEFAULT)
CREATE_SKILL = Unary(
    "box_create_skill",
    model(lambda: m.CreateSkillRequest),
    model(lambda: m.SkillResult),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
UPDATE_SKILL = Unary(
    "box_update_skill",
    model(lambda: m.UpdateSkillRequest),
    model(lambda: m.SkillResult),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
DELETE_SKILL = Unary(
    "box_delete_skill", SKILL_NAME, model(lambda: m.SkillDeleted), H, timeout=SKILL, langbot_timeout=DEFAULT
)
# LangBot answers the skill itself here, not wrapped.
SCAN_SKILL_DIRECTORY = Unary(
    "box_scan_skill_directory",
    model(lambda: m.ScanSkillRequest),
    model(lambda: m.Skill),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
LIST_SKILL_FILES = Unary(
    "box_list_skill_files",
    model(lambda: m.ListSkillFilesRequest),
    model(lambda: m.SkillFileListing),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
READ_SKILL_FILE = Unary(
    "box_read_skill_file",
    model(lambda: m.ReadSkillFileRequest),
    model(lambda: m.SkillFileContent),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
WRITE_SKILL_FILE = Unary(
    "box_write_skill_file",
    model(lambda: m.WriteSkillFileRequest),
    model(lambda: m.SkillFileWritten),
    H,
    timeout=SKILL,
    langbot_timeout=DEFAULT,
)
PREVIEW_SKILL_ZIP = Unary(
    "box_preview_skill_zip",
    model(lambda: m.PreviewSkillZipRequest),
    model(lambda: m.SkillPreviewList),
    H,
    timeout=PREVIEW,
    langbot_timeout=PREVIEW,
)
INSTALL_SKILL_ZIP = Unary(
    "box_install_skill_zip",
    model(lambda: m.InstallSkillZipRequest),
    model(lambda: m.SkillList),
    H,
    timeout=INSTALL,
    langbot_timeout=INSTALL,
)

# ── LangBot 0.7's admission and reports (§B.2, §D.12, §D.13) ─────────────

UPSERT_ADMISSION_GRANT = Unary(
    "box_upsert_sandbox_admission_grant",
    model(lambda: m.SandboxAdmissionGrant),
    model(lambda: m.GrantInstalled),
    H,
    timeout=DEFAULT,
    langbot_timeout=DEFAULT,
)
REVOKE_ADMISSION_GRANT = Unary(
    "box_revoke_sandbox_admission_grant",
    model(lambda: m.SandboxAdmissionRevocation),
    model(lambda: m.GrantRevoked),
    H,
    timeout=30.0,
    langbot_timeout=30.0,
)
VERIFY_SHARED_WORKSPACE = Unary(
    "box_verify_shared_workspace",
    model(lambda: m.SharedWorkspaceProbe),
    model(lambda: m.ProbeDigest),
    H,
    timeout=DEFAULT,
    langbot_timeout=DEFAULT,
)
STORAGE_ANALYSIS = Unary(
    "box_get_storage_analysis", EMPTY, model(lambda: m.StorageAnalysis), T, timeout=60.0, langbot_timeout=60.0
)

ACTIONS: tuple[Action, ...] = (
    PING,
    FILE_CHUNK,
    INIT,
    HEALTH,
    BACKEND_INFO,
    STATUS,
    SHUTDOWN_SESSIONS,
    RELAY_INFO,
    EXEC,
    EXEC_STREAM,
    EXEC_INTERACTIVE,
    EXEC_INPUT,
    EXEC_RESIZE,
    EXEC_SIGNAL,
    CREATE_SESSION,
    GET_SESSION,
    GET_SESSIONS,
    DELETE_SESSION,
    START_PROCESS,
    GET_PROCESS,
    STOP_PROCESS,
    FS_READ,
    FS_WRITE,
    FS_LIST,
    FS_STAT,
    FS_REMOVE,
    LIST_SKILLS,
    GET_SKILL,
    CREATE_SKILL,
    UPDATE_SKILL,
    DELETE_SKILL,
    SCAN_SKILL_DIRECTORY,
    LIST_SKILL_FILES,
    READ_SKILL_FILE,
    WRITE_SKILL_FILE,
    PREVIEW_SKILL_ZIP,
    INSTALL_SKILL_ZIP,
    UPSERT_ADMISSION_GRANT,
    REVOKE_ADMISSION_GRANT,
    VERIFY_SHARED_WORKSPACE,
    STORAGE_ANALYSIS,
)
BY_NAME: Mapping[str, Action] = {action.name: action for action in ACTIONS}


def names(kind: Kind) -> frozenset[str]:
    """The actions of one tenancy kind."""
    return frozenset(action.name for action in ACTIONS if action.kind is kind)
