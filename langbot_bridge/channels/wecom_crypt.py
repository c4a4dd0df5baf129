"""WeCom's callback encryption (the published ``WXBizMsgCrypt`` scheme), both ways, without I/O.

- The AES key is the base64-decoded ``EncodingAESKey`` (43 characters + "="): 32 bytes; the IV
  is its first 16 bytes; AES-256-CBC with PKCS#7 padding to 32-byte blocks.
- The plaintext is ``16 random bytes + 4-byte big-endian length + message + receive id`` (the
  corp id); decryption checks the receive id.
- ``msg_signature`` = hex SHA-1 of the sorted concatenation of token, timestamp, nonce and the
  ciphertext; compared in constant time.
- Callback bodies are XML ``<xml><ToUserName/><Encrypt/><AgentID/></xml>``; a passive reply is
  ``<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32


class CryptError(ValueError):
    """A callback that does not verify or decrypt; the message says which check failed."""


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte key of a 43-character ``EncodingAESKey``."""
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise CryptError("EncodingAESKey is not base64") from None
    if len(key) != 32:
        raise CryptError("EncodingAESKey must be 43 characters (32 bytes once decoded)")
    return key


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """``msg_signature`` of a callback."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


def check_signature(token: str, timestamp: str, nonce: str, encrypted: str, given: str) -> None:
    """Raises ``CryptError`` unless ``given`` is the callback's signature."""
    expected = signature(token, timestamp, nonce, encrypted)
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise CryptError("msg_signature does not match")


def encrypt(key: bytes, message: bytes, receive_id: str, random16: bytes | None = None) -> str:
    """The base64 ciphertext of ``message`` for ``receive_id``."""
    plain = (random16 or os.urandom(16)) + struct.pack(">I", len(message)) + message + receive_id.encode()
    pad = BLOCK - len(plain) % BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()).decode()


def decrypt(key: bytes, encrypted: str, receive_id: str) -> bytes:
    """The message inside ``encrypted``; raises ``CryptError`` on bad base64, padding, length
    or a receive id that is not ``receive_id``."""
    try:
        data = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise CryptError("the ciphertext is not base64") from None
    if not data or len(data) % 16:
        raise CryptError("the ciphertext has a wrong length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise CryptError("the plaintext has bad padding (wrong EncodingAESKey?)")
    plain = plain[:-pad]
    if len(plain) < 20:
        raise CryptError("the plaintext is too short")
    (length,) = struct.unpack(">I", plain[16:20])
    message, rest = plain[20 : 20 + length], plain[20 + length :]
    if len(message) != length or not hmac.compare_digest(rest, receive_id.encode()):
        raise CryptError("the message is not for this receive id (corp id)")
    return message


def parse_xml(data: bytes | str) -> dict[str, str]:
    """The child elements of an XML ``<xml>`` document as a flat dict (CDATA unwrapped)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CryptError(f"not XML: {exc}") from None
    return {child.tag: (child.text or "") for child in root}


def build_xml(fields: dict[str, str]) -> str:
    """``<xml>`` with one CDATA element per field."""
    inner = "".join(f"<{k}><![CDATA[{v.replace(']]>', ']]]]><![CDATA[>')}]]></{k}>" for k, v in fields.items())
    return f"<xml>{inner}</xml>"


def encrypted_reply(key: bytes, token: str, receive_id: str, message: str, timestamp: str, nonce: str) -> str:
    """A passive reply: ``message`` (XML) encrypted and signed."""
    cipher = encrypt(key, message.encode(), receive_id)
    sig = signature(token, timestamp, nonce, cipher)
    return build_xml({"Encrypt": cipher, "MsgSignature": sig, "TimeStamp": timestamp, "Nonce": nonce})
