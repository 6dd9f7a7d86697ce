"""The app's session state as plain values (mrad_core/ui/sessions.py), without Gradio: the Teach session's push, undo
and remove, the bank Detect uses (the newest taught, or the one before), the "taught here" guard, and what the Detect
tab keeps (its result, calibration levels, bank)."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mrad_core.errors import MRADError
from mrad_core.ui.sessions import Bank, Edit, TeachSession, remember_levels
from mrad_core.viz import Calibration


def test_push_undo_and_the_bank_detect_uses():
    s0 = TeachSession.begin("visa", None)
    assert s0.before == s0.start == Bank("visa") and s0.stack == () and s0.bank == Bank("visa")
    assert s0.edit_base is None and s0.added == () and s0.start_bank == {"source": "visa", "bank_id": None}
    s1 = s0.push("b1", "part_1")
    s2 = s1.push("b2", "part_2")
    assert s0.stack == () and s1.stack == (Edit("b1", ("part_1",)),)  # each value stays as it was
    assert s2.bank == Bank("custom", "b2") and s2.edit_base == "b2" and s2.added == ("part_1", "part_2")
    assert s2.undo() == s1 and s2.undo().bank == Bank("custom", "b1")
    assert s2.undo().undo() == s0 and s2.undo().undo().bank == Bank("visa")  # back to the bank before teaching
    with pytest.raises(MRADError, match="nothing to undo"):
        s0.undo()


def test_remove_is_an_edit_of_its_own_and_emptying_goes_back_to_the_bank_before():
    s = TeachSession.begin("custom", "mine", empty=True).push("b1", "a").push("b2", "b").push("b3", "c")
    removed = s.remove("b4", ["a", "c"])
    assert removed.top == Edit("b4", ("b",)) and removed.bank == Bank("custom", "b4")
    assert removed.undo() == s  # Undo brings the removed images back
    assert removed.push("b5", "d").added == ("b", "d")
    gone = s.remove(None, ["a", "b", "c"])  # started empty and everything removed: no bank is left
    assert gone.stack == () and gone.bank == Bank("custom", "mine") == gone.before


def test_a_session_begins_from_the_bank_in_use_or_an_empty_one():
    assert TeachSession.begin("custom", "mine").before == Bank("custom", "mine")
    assert TeachSession.begin("mvtec", "stale-id").before == Bank("mvtec")  # an id counts only with custom
    empty = TeachSession.begin("visa", None, empty=True)
    assert empty.before == Bank("visa") and empty.start is None and empty.start_bank is None
    loaded = TeachSession.from_bank("b9")
    assert loaded.before == loaded.start == loaded.bank == Bank("custom", "b9") and loaded.stack == ()
    assert Bank("custom", "b9").as_dict() == {"source": "custom", "bank_id": "b9"}


def test_the_taught_here_guard():
    s = TeachSession.begin("visa", None).push("b1", "x").push("b2", "y")
    assert TeachSession.under_way(s, "custom", "b2")
    for source, bank_id in (("custom", "b1"), ("custom", "other"), ("visa", None), ("visa", "b2")):
        assert not TeachSession.under_way(s, source, bank_id), (source, bank_id)
    assert not TeachSession.under_way(None, "custom", "b2")
    assert not TeachSession.under_way(TeachSession.begin("custom", "b2"), "custom", "b2")  # nothing taught yet
    # the next edit continues the session under way, else begins a new one from what Detect uses now
    assert TeachSession.resume(s, "empty", "custom", "b2") is s
    fresh = TeachSession.resume(s, "current", "custom", "b1")
    assert fresh == TeachSession(Bank("custom", "b1"), Bank("custom", "b1"))
    assert TeachSession.resume(None, "empty", "visa", None) == TeachSession(Bank("visa"), None)
    assert TeachSession.required(s, "custom", "b2", "undo") is s
    with pytest.raises(MRADError, match="nothing to remove: the memory bank in use is not one taught here"):
        TeachSession.required(s, "custom", "b1", "remove")
    with pytest.raises(MRADError, match="nothing to undo"):
        TeachSession.required(None, "visa", None, "undo")


def analysis(**levels):
    """A stand-in records.Analysis: per variant an output with its calibration (or None)."""
    return SimpleNamespace(outputs={v: SimpleNamespace(calibration=c) for v, c in levels.items()})


def test_remember_levels_leaves_the_levels_it_was_given_alone():
    tf = Calibration(0.1, 0.9)
    given = {"visa": {"tf": tf}}
    assert remember_levels(given, "custom", "b1", analysis(tf=tf)) == {"visa": {"tf": tf}, "custom:b1": {"tf": tf}}
    assert given == {"visa": {"tf": tf}}
    assert remember_levels(None, "visa", None, None) == {} and remember_levels(given, "visa", None, None) == given


def test_the_sessions_module_needs_no_gradio():
    code = "import sys, mrad_core.ui.sessions; print('gradio' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
