"""What one browser session of the app keeps between events, as typed values with their rules (no Gradio here: each
lives in a gr.State of the page and is unit-tested on its own). The Detect tab keeps its result (a records.Analysis),
the calibration levels the GPU calls brought back (`remember_levels`) and the custom bank id in three gr.State.

    session = TeachSession.resume(None, "current", "visa", None)    # the first edit: a new session
    session = session.push("a1b2", "part_7")                        # one taught bank per edit, newest last
    session.bank                                                    # Bank("custom", "a1b2"): what Detect uses now
    session = session.undo()                                        # back to Bank("visa", None)

Values are frozen: every method returns a new session (Gradio keeps a copy per browser tab; no event changes
another's).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import MRADError
from ..service import Service

CUSTOM = "custom"  # the source of a bank built or taught in the app


@dataclass(frozen=True)
class Bank:
    """A memory bank Detect can use: a source, and for CUSTOM the bank's id."""
    source: str
    bank_id: str | None = None

    @classmethod
    def of(cls, source: str, bank_id: str | None) -> "Bank":
        """The page's (source, bank_id) pair as a Bank: a bank id counts only with the custom source."""
        return cls(source, bank_id if source == CUSTOM else None)

    def as_dict(self) -> dict:
        """{"source", "bank_id"}: the form mrad_core.teaching takes a start bank in."""
        return {"source": self.source, "bank_id": self.bank_id}


@dataclass(frozen=True)
class Edit:
    """One teaching edit: the bank it made and every image taught since the start (newest last)."""
    bank_id: str
    added: tuple[str, ...] = ()


@dataclass(frozen=True)
class TeachSession:
    """The teaching under way in a browser tab.

    before: what Detect used before teaching (where Undo ends); start: the bank the first edit adds to (None: an
    empty bank); stack: one Edit per change, newest last. While Detect uses the newest taught bank, the session is
    "under way" and the next edit continues it; otherwise the next edit begins a new session."""
    before: Bank
    start: Bank | None
    stack: tuple[Edit, ...] = field(default_factory=tuple)

    # ------------------------------------------------------------------ beginning, the guard
    @classmethod
    def begin(cls, source: str, bank_id: str | None, empty: bool = False) -> "TeachSession":
        """A new session from what Detect uses now (`source`, `bank_id`); `empty`: the first edit starts an empty
        bank instead of adding to that one."""
        before = Bank.of(source, bank_id)
        return cls(before, None if empty else before)

    @classmethod
    def from_bank(cls, bank_id: str) -> "TeachSession":
        """A session that continues a custom bank loaded from its files (Undo ends at it)."""
        loaded = Bank(CUSTOM, bank_id)
        return cls(loaded, loaded)

    @staticmethod
    def under_way(session: "TeachSession | None", source: str, bank_id: str | None) -> bool:
        """Whether Detect uses the newest bank taught in `session` (the "taught here" guard)."""
        return bool(session and session.stack) and source == CUSTOM and bank_id == session.stack[-1].bank_id

    @classmethod
    def resume(cls, session: "TeachSession | None", start_mode: str, source: str,
               bank_id: str | None) -> "TeachSession":
        """The session under way, else a new one from the bank in use (start_mode "empty": from an empty bank)."""
        if cls.under_way(session, source, bank_id):
            return session
        return cls.begin(source, bank_id, empty=start_mode == "empty")

    @classmethod
    def required(cls, session: "TeachSession | None", source: str, bank_id: str | None,
                 doing: str) -> "TeachSession":
        """The session under way, or MRADError "nothing to <doing>" when Detect uses a bank not taught here."""
        if not cls.under_way(session, source, bank_id):
            raise MRADError(f"nothing to {doing}: the memory bank in use is not one taught here")
        return session

    # ------------------------------------------------------------------ what it holds
    @property
    def top(self) -> Edit | None:
        """The newest edit (None before the first)."""
        return self.stack[-1] if self.stack else None

    @property
    def bank(self) -> Bank:
        """What Detect uses: the newest taught bank, or the one in use before teaching when none is left."""
        return Bank(CUSTOM, self.top.bank_id) if self.stack else self.before

    @property
    def added(self) -> tuple[str, ...]:
        """The images the newest bank holds beyond its start (the "Taught images" list)."""
        return self.top.added if self.stack else ()

    @property
    def edit_base(self) -> str | None:
        """The taught bank the next edit changes (None: the start bank, or an empty one)."""
        return self.top.bank_id if self.stack else None

    @property
    def start_bank(self) -> dict | None:
        """The start as mrad_core.teaching takes it ({"source", "bank_id"}, or None for an empty bank)."""
        return self.start.as_dict() if self.start else None

    # ------------------------------------------------------------------ edits
    def push(self, bank_id: str, image_id: str) -> "TeachSession":
        """An image taught: its new bank on top, holding every image taught so far plus this one."""
        return replace(self, stack=self.stack + (Edit(bank_id, self.added + (image_id,)),))

    def undo(self) -> "TeachSession":
        """Back to the earlier bank (or, after the first edit, to what Detect used before teaching)."""
        if not self.stack:
            raise MRADError("nothing to undo: no bank was taught in this session")
        return replace(self, stack=self.stack[:-1])

    def remove(self, bank_id: str | None, chosen) -> "TeachSession":
        """Taught images removed: `bank_id` is the bank without them, on top (Undo brings them back); None when
        nothing is left of a session that started empty: then Detect goes back to the bank it used before."""
        if bank_id is None:
            return replace(self, stack=())
        gone = set(chosen)
        return replace(self, stack=self.stack + (Edit(bank_id, tuple(i for i in self.added if i not in gone)),))


# ---------------------------------------------------------------------- Detect
def remember_levels(levels: dict | None, source: str, bank_id: str | None, analysis) -> dict:
    """The session's calibration levels plus those an Analysis came back with (a GPU call computed them and cannot
    keep them), under its source's calibration key; the same dict when it brought none."""
    known = {v: o.calibration for v, o in analysis.outputs.items() if o.calibration} if analysis is not None else {}
    if not known:
        return dict(levels or {})
    return {**(levels or {}), Service.calibration_key(source, bank_id): known}
