"""The measured steps, in the order they run and appear in tables."""

from __future__ import annotations

PUT_A = "put A"
REPUT_A = "re-put A unchanged"
PUT_B = "put B after A"
GET_B = "get B, empty"
GET_B_CACHED = "get B, machine had A"
GET_B_INTO_A = "get B into dir holding A"
STEPS = (PUT_A, REPUT_A, PUT_B, GET_B, GET_B_CACHED, GET_B_INTO_A)
