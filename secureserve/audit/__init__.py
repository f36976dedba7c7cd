"""The audit trail: a hash-chained JSON-lines log, separate from the application log.

One line per authenticated request and per admin action (reload, key changes), each a
compact JSON object with sorted keys, terminated by LF. Inputs and outputs appear only
as keyed digests (``hmac-sha256:<hex>``, see :meth:`AuditLog.digest`), never raw.
Refusals of callers that did not authenticate are counted, and one ``refusals`` line
per client address, route, status and reason is written per window
(:meth:`AuditLog.refused`), so that nobody without a credential can fill the disk.

Chain. Every record carries ``seq`` (0, 1, 2, ... without gaps) and ``prev``, the hex
SHA-256 of the exact bytes of the previous line without its LF (``"0" * 64`` for the
first record ever). When a file reaches ``max_bytes`` it is renamed to
``<stem>.<n>.jsonl`` (``n`` increasing) and the chain continues in a new file whose
first record names the old one in ``rotated_from``. Beyond ``max_files`` rotated
files the oldest are removed, after an ``audit-pruned`` record that says which and
where their lines ended. :func:`verify_chain` walks the files oldest first, reports
the first line that breaks the chain, and checks that the chain starts at genesis or
where the last ``audit-pruned`` record says: an edited line shows up on the line after
it (its ``prev`` no longer matches), a deleted or moved line on its own position
(``seq`` jumps), a missing or swapped file on the first line of the file after it, a
file removed outside retention on the first line. Editing the very last line cannot be
seen from inside the chain; compare the chain head that verification prints with the
``audit chain head`` lines the server writes to its application log at every rotation
and at shutdown.

Failure. When a record cannot be written (disk full, file made read-only, folder gone)
the default (``on_write_error="refuse"``) raises :class:`AuditUnavailable`, a 503 with
``Retry-After``, so the caller refuses the request (fail closed). ``"continue"`` logs
one error per outage and serves on; when writing works again, an ``audit-resumed``
record states how many records were lost.

Modules. Dependencies run one way: ``records`` and ``digest_key`` use no other audit
module, ``verify`` and ``refusals`` use ``records``, ``retention`` uses ``records``
and ``verify``, ``chainfile`` uses those three, ``writer`` uses all of them, and this
package re-exports the public names.

- :mod:`secureserve.audit.records`: what a line holds (:class:`AuditRecord`,
  :class:`RequestEntry`, :func:`decision`), the field shaping and line hashing, and
  :class:`AuditUnavailable`.
- :mod:`secureserve.audit.writer`: :class:`AuditLog`, which shapes and batches
  records, counts refusals and fails closed.
- :mod:`secureserve.audit.chainfile`: the file on disk, which chains lines, rotates,
  prunes and notices a file deleted or replaced.
- :mod:`secureserve.audit.verify`: :func:`chain_files`, :func:`verify_chain`,
  :class:`VerifyResult` and :func:`format_result`.
- :mod:`secureserve.audit.retention`: which rotated files go, and the
  ``audit-pruned`` record that says so.
- :mod:`secureserve.audit.refusals`: the bounded per-window counts of refusals.
- :mod:`secureserve.audit.digest_key`: :func:`generate_digest_key` and
  :func:`load_digest_key`.
"""

from __future__ import annotations

from secureserve.audit.digest_key import generate_digest_key, load_digest_key
from secureserve.audit.records import (
    DIGEST_PREFIX,
    GENESIS,
    AuditRecord,
    AuditUnavailable,
)
from secureserve.audit.records import Decision as Decision
from secureserve.audit.records import Digest as Digest
from secureserve.audit.records import RequestEntry as RequestEntry
from secureserve.audit.records import decision as decision
from secureserve.audit.verify import VerifyResult, chain_files, format_result, verify_chain
from secureserve.audit.writer import AuditLog

__all__ = [
    "DIGEST_PREFIX",
    "GENESIS",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "VerifyResult",
    "chain_files",
    "format_result",
    "generate_digest_key",
    "load_digest_key",
    "verify_chain",
]
