"""Permalinks: every widget that defines what a page shows mirrors itself in ``st.query_params``.

A widget's value comes, in order of precedence, from

1. the URL, when it carries a value this session has not applied yet (a pasted link,
   a link from another page, the first load);
2. the widget's own state (the user changed it);
3. the value last shown for the same parameter on any page (so the chosen head
   follows you from the head explorer to an analysis);
4. the widget's default.

After the widget is drawn its value is written back to the URL. An invalid URL value (a
layer the run does not have, head 99, k=abc) is not an error: the page says which value of the
link it could not show and what it shows instead (``_say_refused``), once per link; an unknown
run stops the page with its own message (``widgets.refuse_run_link``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

_APPLIED = "_url_applied"  # param -> the raw URL value this session last applied or wrote
_STICKY = "_url_sticky"  # param -> the last value any page showed
_REFUSED = "_url_refused"  # param -> a raw URL value just found invalid, until the page says so


def _memory(name: str) -> dict:
    return st.session_state.setdefault(name, {})


def seed(key: str, param: str, parse: Callable[[str], Any] = str,
         valid: Callable[[Any], bool] = lambda v: True) -> None:
    """Put the URL's (or the sticky) value of ``param`` into widget state ``key`` when it should win."""
    applied, sticky = _memory(_APPLIED), _memory(_STICKY)
    raw = st.query_params.get(param)
    fresh = key not in st.session_state
    if raw is not None and (fresh or applied.get(param) != raw):
        applied[param] = raw
        try:
            value = parse(raw)
        except (TypeError, ValueError):
            value = None
        if value is not None and valid(value):
            st.session_state[key] = value
            return
        _memory(_REFUSED)[param] = raw
    if key in st.session_state and not valid(st.session_state[key]):
        del st.session_state[key]  # e.g. a layer of the previously chosen run
    if key not in st.session_state and param in sticky and valid(sticky[param]):
        st.session_state[key] = sticky[param]


def _say_refused(param: str, label: str, shown: Any, choices: str) -> None:
    """A warning, once per link, that the URL's value of ``param`` could not be shown and what is shown instead."""
    raw = _memory(_REFUSED).pop(param, None)
    if raw is not None:
        st.warning(f"The link asks for {label.lower()} **{raw}**, which is not available here ({choices}); "
                   f"showing {label.lower()} **{shown}** instead.", icon=":material/link_off:")


def _choices(options: Sequence, to_text: Callable[[Any], str] = str) -> str:
    texts = [to_text(o) for o in options]
    return "choices: " + (", ".join(texts) if len(texts) <= 12 else f"{', '.join(texts[:5])}, ... {texts[-1]}")


def is_new(param: str, raw: str) -> bool:
    """Whether the URL's ``raw`` value of ``param`` has not been applied in this session yet (a fresh link)."""
    return _memory(_APPLIED).get(param) != raw


def publish(param: str, value: Any, to_text: Callable[[Any], str] = str) -> None:
    """Write the shown value to the URL (None removes the parameter) and remember it."""
    applied, sticky = _memory(_APPLIED), _memory(_STICKY)
    if value is None or value == "" or value == []:
        if param in st.query_params:
            del st.query_params[param]
        applied.pop(param, None)
        return
    text = to_text(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text
    applied[param] = text
    sticky[param] = value


def selectbox(label: str, options: Sequence, key: str, param: str, parse: Callable[[str], Any] = str,
              to_text: Callable[[Any], str] = str, container=st, **kwargs) -> Any:
    """``st.selectbox`` whose value lives in the URL as ``param``."""
    seed(key, param, parse, valid=lambda v: v in options)
    value = container.selectbox(label, options, key=key, **kwargs)
    _say_refused(param, label, kwargs["format_func"](value) if "format_func" in kwargs else to_text(value),
                 _choices(options, kwargs.get("format_func", to_text)))
    publish(param, value, to_text)
    return value


def text_input(label: str, key: str, param: str, container=st, **kwargs) -> str:
    """``st.text_input`` whose value lives in the URL as ``param``."""
    seed(key, param)
    value = container.text_input(label, key=key, **kwargs)
    publish(param, value.strip() or None)
    return value.strip()


def number(label: str, key: str, param: str, lo: int, hi: int, default: int, container=st, **kwargs) -> int:
    """An integer slider whose value lives in the URL as ``param``."""
    seed(key, param, int, valid=lambda v: lo <= v <= hi)
    if key not in st.session_state:
        st.session_state[key] = min(max(default, lo), hi)
    value = container.slider(label, lo, hi, key=key, **kwargs) if hi > lo else lo
    _say_refused(param, label, value, f"{lo} to {hi}")
    publish(param, value)
    return int(value)


def ints(text: str) -> list[int]:
    """'9,10,11' -> [9, 10, 11]."""
    return [int(p) for p in text.split(",") if p.strip()]


def ints_text(values: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in values)


def multiselect(label: str, options: Sequence[int], key: str, param: str, default: Sequence[int],
                container=st, **kwargs) -> list[int]:
    """``st.multiselect`` of integers (layers) whose value lives in the URL as '9,10,11'."""
    seed(key, param, ints, valid=lambda v: bool(v) and all(x in options for x in v))
    if key not in st.session_state:
        st.session_state[key] = [v for v in default if v in options]
    value = container.multiselect(label, options, key=key, **kwargs)
    _say_refused(param, label, ints_text(value) or "none", _choices(options))
    publish(param, value or None, ints_text)
    return list(value)
