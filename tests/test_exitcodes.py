import pytest

from mailfilter.exitcodes import CLAMSCAN_CODES, PIPE_EXIT_BY_ACTION, PIPE_EXIT_STATUSES, clamscan_code_text
from mailfilter.model import Action, Dsn

LEGACY = [40, 50, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 63, 64, 70, 71]


def test_every_action_maps_to_a_status_pipe8_accepts():
    assert set(PIPE_EXIT_BY_ACTION) == set(Action)
    assert set(PIPE_EXIT_BY_ACTION.values()) <= PIPE_EXIT_STATUSES == {0, 69, 75}


@pytest.mark.parametrize("code", [0, 1, 2, *LEGACY])
def test_known_clamscan_codes_have_words(code):
    assert code in CLAMSCAN_CODES
    assert not clamscan_code_text(code).startswith("unknown error")


def test_specific_texts():
    assert clamscan_code_text(50) == "database initialization error"
    assert clamscan_code_text(71) == "can't allocate memory (malloc)"
    assert clamscan_code_text(1) == "virus(es) found"


@pytest.mark.parametrize("code", [3, 41, 62, 99, 255])
def test_unknown_codes_say_so(code):
    assert clamscan_code_text(code).startswith("unknown error") and str(code) in clamscan_code_text(code)


def test_signal_and_missing_status():
    assert clamscan_code_text(-9) == "killed by signal 9"
    assert "did not run" in clamscan_code_text(None)


@pytest.mark.parametrize("status", [(2, 0, 0), (3, 1, 1), (6, 0, 0), (4, -1, 0)])
def test_dsn_rejects_bad_status(status):
    with pytest.raises(ValueError):
        Dsn(status, "x")


def test_dsn_rejects_multiline_text():
    with pytest.raises(ValueError):
        Dsn((4, 3, 0), "a\r\n5.0.0 b")
