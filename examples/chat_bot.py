"""A minimal chat bot with a sandbox per chat.

It reads chat messages as ``<chat>: <text>`` lines on stdin and answers on stdout, the way a
platform adapter would hand them over. Every chat gets its own sandbox, so chats never see each
other's files; all of them share one connection to the daemon.

    !run <command>        run a shell command in the chat's sandbox
    !save <file> <text>   write a file there
    !show <file>          read it back
    anything else         this help

Run it against ``./dev serve`` (``BOXRUNTIME_ENDPOINT=ws://127.0.0.1:5410``), or without an
endpoint to spawn a daemon of its own:

    printf 'alice: !save note.txt hi\\nalice: !show note.txt\\nbob: !show note.txt\\n' \\
        | .venv/bin/python examples/chat_bot.py
"""

from __future__ import annotations

import asyncio
import sys

from langbot_bridge import ChatContext, Connector, Sandbox, resolve_session_id, runtime_target

HELP = "say !run <command>, !save <file> <text> or !show <file>"
SESSION_TEMPLATE = "chat-{launcher_id}"  # one sandbox per chat; unsafe chat ids are hashed


async def reply(sandbox: Sandbox, text: str) -> str:
    command, _, rest = text.partition(" ")
    if command == "!run" and rest:
        result = await sandbox.commands.run(rest, timeout=30)
        output = (result.stdout + result.stderr).strip()
        if result.ok:
            return output
        return f"exit {result.exit_code}" + (f": {output}" if output else "")
    if command == "!save" and " " in rest:
        name, _, content = rest.partition(" ")
        await sandbox.files.write(name, content)
        return f"saved {name}"
    if command == "!show" and rest:
        if not await sandbox.files.exists(rest):
            return f"no {rest} in this chat"
        return await sandbox.files.read(rest)
    return HELP


async def main() -> None:
    sandboxes: dict[str, Sandbox] = {}
    async with Connector(runtime_target()) as link:
        link.require()
        try:
            while line := await asyncio.to_thread(sys.stdin.readline):
                chat, sep, text = line.partition(":")
                if not sep:
                    continue
                chat = chat.strip()
                if chat not in sandboxes:
                    session_id = resolve_session_id(
                        SESSION_TEMPLATE, ChatContext(launcher_type="person", launcher_id=chat)
                    )
                    sandboxes[chat] = await Sandbox.create(session_id, connector=link)
                print(f"{chat}> {await reply(sandboxes[chat], text.strip())}", flush=True)
        finally:
            for sandbox in sandboxes.values():
                await sandbox.kill()


if __name__ == "__main__":
    asyncio.run(main())
