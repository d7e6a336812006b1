"""Batched LAPACK calls that a compiled XLA:CPU program may run at the same time.

jaxlib 0.10's CPU LAPACK kernels split a batch worth at least
:data:`bayesgmm._chains.LAPACK_SPLIT_FLOPS` over XLA's intra-op thread pool and wait there for
the pieces. XLA's CPU runtime runs the operations of a program that do not depend on each other
at once, on the same pool; two such calls running at once can then hold every thread of a
two-core machine, each waiting for pieces queued behind the other, forever.
:func:`bayesgmm._numerics.in_turn` orders two calls by a data dependency, which XLA keeps.

:func:`unordered_lapack_calls` reads a compiled program's optimised HLO (``compiled.as_text()``)
and lists the pairs of such calls (or of loops and conditionals containing them) in one
computation that neither depends on the other. It follows data dependencies only: XLA may still
order a listed pair through shared buffers, so a listed pair may be harmless, but a pair not
listed can never run at once.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_REFERENCE = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_COMMENT = re.compile(r"/\*.*?\*/")
_SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")


class Instruction(NamedTuple):
    opcode: str
    operands: tuple[str, ...]
    called: tuple[str, ...]
    target: str | None
    flops: float  # of a LAPACK custom call (0 otherwise): batch x rows^2 x columns of its first result


class UnorderedPair(NamedTuple):
    computation: str
    first: str
    second: str
    flops: tuple[float, float]


def _split_operands(rest: str, opcode: str) -> tuple[str, str]:
    """The operand list and the attributes after it."""
    start = rest.index(opcode + "(") + len(opcode) + 1
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    return rest[start : i - 1], rest[i:]


def _lapack_flops(result_type: str) -> float:
    shape = _SHAPE.search(result_type)
    dims = [int(d) for d in shape.group(1).split(",") if d] if shape else []
    if len(dims) < 2:
        return 0.0
    return float(math.prod(dims[:-2]) * dims[-2] ** 2 * dims[-1])


def parse(text: str) -> dict[str, dict[str, Instruction]]:
    """Computations of an HLO module, each its instructions in printed order (operands first)."""
    computations: dict[str, dict[str, Instruction]] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header:
                current = computations.setdefault(header.group(2), {})
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(_COMMENT.sub("", line))  # tuple types carry /*index=5*/ comments
        if not match:
            continue
        name, rest = match.groups()
        opcode = re.match(r"(\([^=]*?\)|\S+) ([\w\-]+)\(", rest)
        if opcode is None:
            continue
        result_type, op = opcode.groups()
        operands, attributes = _split_operands(rest, op)
        called = _CALLED.findall(attributes)
        branches = _BRANCHES.search(attributes)
        if branches:
            called += _REFERENCE.findall(branches.group(1))
        target = _TARGET.search(attributes)
        target = target.group(1) if target else None
        flops = _lapack_flops(result_type) if target and "lapack" in target else 0.0
        current[name] = Instruction(op, tuple(_REFERENCE.findall(operands)), tuple(called), target, flops)
    return computations


def unordered_lapack_calls(text: str, min_flops: float = 0.0) -> list[UnorderedPair]:
    """Pairs of LAPACK calls, each worth at least ``min_flops``, or of instructions running such
    calls (loops, conditionals, calls), in one computation, neither depending on the other."""
    computations = parse(text)
    largest: dict[str, float] = {}

    def computation_flops(name: str) -> float:  # the largest LAPACK call it runs (-1: none)
        if name not in largest:
            largest[name] = -1.0  # (no recursion in HLO; guards a malformed module)
            largest[name] = max((instruction_flops(i) for i in computations.get(name, {}).values()), default=-1.0)
        return largest[name]

    def instruction_flops(instruction: Instruction) -> float:
        if instruction.target is not None and "lapack" in instruction.target:
            return instruction.flops
        if instruction.opcode == "fusion":
            return -1.0
        return max((computation_flops(c) for c in instruction.called), default=-1.0)

    pairs = []
    for name, instructions in computations.items():
        calls = {n: f for n, i in instructions.items() if (f := instruction_flops(i)) >= min_flops and f >= 0}
        if len(calls) < 2:
            continue
        index = {n: k for k, n in enumerate(instructions)}
        before: dict[str, int] = {}  # bit set of the instructions each one depends on
        for n, instruction in instructions.items():
            bits = 0
            for operand in instruction.operands:
                if operand in before:
                    bits |= before[operand] | (1 << index[operand])
            before[n] = bits
        names = list(calls)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if not (before[b] >> index[a] & 1 or before[a] >> index[b] & 1):
                    pairs.append(UnorderedPair(name, a, b, (calls[a], calls[b])))
    return pairs
