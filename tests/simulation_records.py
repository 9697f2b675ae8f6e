"""Activation records shared by the simulator tests: one of tokens that could break a one-token-per-line prompt
(tabs, newlines, control characters, multi-byte text, "10", empty strings) and three ordinary ones."""

from __future__ import annotations

from core.records import ActivationRecord

TRICKY = (" hello", "\n", "\t", "a\tb", "é", "日本", "10", "", "  ", "\r\n", "x\x00y")


def sample_records() -> list[ActivationRecord]:
    return [
        ActivationRecord(TRICKY, tuple(float(i % 3) for i in range(len(TRICKY)))),
        ActivationRecord(("The", " cat", " sat", " on", " the", " mat", "."), (0, 5, 0, 0, 0, 1, 0)),
        ActivationRecord((" Monday", ","), (3, 0)),
        ActivationRecord(tuple(f" w{i}" for i in range(20)), tuple(float(i % 4) for i in range(20))),
    ]
