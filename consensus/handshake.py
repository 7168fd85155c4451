"""Mutual authentication of a replica-to-replica connection, by challenge and response.

Every replica of a group holds the group's secret token; the token never crosses the
wire. On a new connection (the dialer is the *client*, the listener the *server*):

1. client → server: ``HELLO`` = magic (4 bytes) | client nonce (32 random bytes);
2. server → client: server nonce (32 random bytes) | HMAC-SHA256(token, "server" label |
   client nonce | server nonce);
3. client → server: HMAC-SHA256(token, "client" label | client nonce | server nonce);
4. server → client: one ``ACCEPTED`` byte.

Each side checks the other's proof (``hmac.compare_digest``) before it goes on: a proof is
bound to both fresh nonces and to its direction, so a recorded handshake replayed on a new
connection, or a proof reflected back to its sender, does not verify. Before it is
authenticated a connection is read exactly the fixed sizes above, all within one deadline,
so a stranger cannot make a replica buffer more than a few dozen bytes, nor hold a
connection open past the deadline. What follows the handshake is neither encrypted nor
integrity-protected.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import struct
import time

__all__ = ["ACCEPTED", "HELLO", "HandshakeError", "client_handshake", "server_handshake"]

MAGIC = b"RPH1"
NONCE_BYTES = 32
PROOF_BYTES = 32
HELLO = struct.Struct(f">4s{NONCE_BYTES}s")  # magic, client nonce
CHALLENGE = struct.Struct(f">{NONCE_BYTES}s{PROOF_BYTES}s")  # server nonce, server proof
ACCEPTED = b"\x01"
_CLIENT = b"raftps peer client proof\n"
_SERVER = b"raftps peer server proof\n"


class HandshakeError(ConnectionError):
    """A peer connection failed authentication (wrong token, replayed or malformed
    handshake); it is closed."""


def proof(token: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the side with ``role`` sends to prove it holds ``token`` on this connection."""
    return hmac.new(token, role + client_nonce + server_nonce, hashlib.sha256).digest()


def recv_within(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from ``sock`` by ``deadline`` (``time.monotonic``);
    TimeoutError past it, ConnectionError if the peer closes first."""
    buf = bytearray(size)
    view = memoryview(buf)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the peer handshake took longer than its deadline "
                               f"({size - len(view)} of {size} bytes read)")
        sock.settimeout(left)
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionError("peer closed the connection during the handshake")
        view = view[got:]
    return bytes(buf)


def client_handshake(sock: socket.socket, token: bytes, timeout: float) -> None:
    """Authenticate to the server at the other end of ``sock`` (and it to us) within
    ``timeout`` seconds; raises HandshakeError, TimeoutError or ConnectionError."""
    deadline = time.monotonic() + timeout
    client_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.settimeout(timeout)
    sock.sendall(HELLO.pack(MAGIC, client_nonce))
    server_nonce, server_proof = CHALLENGE.unpack(recv_within(sock, CHALLENGE.size, deadline))
    if not hmac.compare_digest(server_proof, proof(token, _SERVER, client_nonce,
                                                   server_nonce)):
        raise HandshakeError("the peer's proof does not match this group's token")
    sock.sendall(proof(token, _CLIENT, client_nonce, server_nonce))
    if recv_within(sock, len(ACCEPTED), deadline) != ACCEPTED:
        raise HandshakeError("the peer refused the connection")


def server_handshake(sock: socket.socket, token: bytes, timeout: float) -> None:
    """Authenticate the client at the other end of ``sock`` (and us to it) within
    ``timeout`` seconds; raises HandshakeError, TimeoutError or ConnectionError. The caller
    then admits the connection and sends ``ACCEPTED``."""
    deadline = time.monotonic() + timeout
    magic, client_nonce = HELLO.unpack(recv_within(sock, HELLO.size, deadline))
    if magic != MAGIC:
        raise HandshakeError(f"not a raftps peer handshake (magic {magic!r}, expected "
                             f"{MAGIC!r}): is the peer running another version?")
    server_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(CHALLENGE.pack(server_nonce, proof(token, _SERVER, client_nonce,
                                                    server_nonce)))
    client_proof = recv_within(sock, PROOF_BYTES, deadline)
    if not hmac.compare_digest(client_proof, proof(token, _CLIENT, client_nonce,
                                                   server_nonce)):
        raise HandshakeError("a peer connection's proof does not match this group's token")
