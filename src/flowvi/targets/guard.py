"""Exceptions raised inside a target's ``log_prob``, reported as one :class:`TargetError` line that says where
flowvi called the target (the first check, training step N, evaluation)."""

from __future__ import annotations

from contextlib import contextmanager

from flowvi.targets.base import TargetError


def _target_codes(target) -> set:
    codes = set()
    for fn in (getattr(target, "fn", None), getattr(type(target), "log_prob", None)):
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def raised_in_target(exc: BaseException, target) -> bool:
    """Whether ``exc`` passed through ``target.log_prob`` (or a wrapped function's frame) on its way up."""
    codes, tb = _target_codes(target), exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code in codes or frame.f_locals.get("self") is target:
            return True
        tb = tb.tb_next
    return False


def target_error(exc: Exception, target, where: str) -> TargetError | None:
    """A one-line TargetError for an exception of the target's own code (or a TargetError without a place),
    naming ``where``; None for any other exception."""
    if isinstance(exc, TargetError):
        return None if "(in " in str(exc) else TargetError(f"{exc} (in {where})")
    if not raised_in_target(exc, target):
        return None
    text = str(exc).strip().splitlines()
    return TargetError(f"the target raised {type(exc).__name__}: {text[0] if text else ''} (in {where})")


@contextmanager
def guarded(target, where: str):
    """Run a block that calls ``target``; an exception of the target becomes a TargetError naming ``where``."""
    try:
        yield
    except Exception as e:
        err = target_error(e, target, where)
        if err is None:
            raise
        raise err from e
