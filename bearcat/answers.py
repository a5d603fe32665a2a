"""What to type for a reading, when the captcha asks a question: `mode.answer=arithmetic`
works out a maths captcha (`7*3=?` -> `21`).

The expression is parsed, never `eval`-ed: whole numbers, + - * / (also x, ×, ÷, their
full-width forms and the Chinese words 加 减 乘 除, 加上 减去 乘以 除以), brackets, the usual
precedence, and a trailing `=`, `=?`, `?` or 等于. A reading that is not such an
expression with an operator (a digit or the operator misread away) has no answer: None.
"""
from __future__ import annotations

import re
from fractions import Fraction

OPERATORS = {"+": "+", "-": "-", "*": "*", "x": "*", "X": "*", "×": "*", "/": "/", "÷": "/"}
# Chinese captchas write the operators as words (3加5等于?) or full-width signs; longer words first
WORDS = [("乘以", "*"), ("除以", "/"), ("加上", "+"), ("减去", "-"), ("等于", "="), ("加", "+"), ("减", "-"),
         ("乘", "*"), ("除", "/"), ("＋", "+"), ("－", "-"), ("＊", "*"), ("／", "/"), ("＝", "="), ("？", "?"),
         ("（", "("), ("）", ")")]
TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def _tokens(text: str) -> list[str] | None:
    for word, sign in WORDS:
        text = text.replace(word, sign)
    body = re.sub(r"\s*=?\s*\??\s*$", "", text.strip())  # "7*3=?", "7*3=", "7*3?" -> "7*3"
    out = []
    for number, symbol in TOKEN.findall(body):
        if number:
            out.append(number)
        elif symbol in OPERATORS:
            out.append(OPERATORS[symbol])
        elif symbol in "()":
            out.append(symbol)
        elif not symbol.isspace():
            return None
    return out or None


def _parse(tokens: list[str]) -> Fraction:
    """Recursive descent over `tokens` (consumed from the front); ValueError if malformed."""
    def term() -> Fraction:
        value = factor()
        while tokens and tokens[0] in "*/":
            op = tokens.pop(0)
            right = factor()
            if op == "/" and right == 0:
                raise ValueError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def expression() -> Fraction:
        value = term()
        while tokens and tokens[0] in "+-":
            value = value + term() if tokens.pop(0) == "+" else value - term()
        return value

    def factor() -> Fraction:
        if not tokens:
            raise ValueError("ends early")
        token = tokens.pop(0)
        if token == "-":
            return -factor()
        if token == "(":
            value = expression()
            if not tokens or tokens.pop(0) != ")":
                raise ValueError("unclosed bracket")
            return value
        if token.isdigit():
            return Fraction(int(token))
        raise ValueError(f"unexpected {token!r}")

    value = expression()
    if tokens:
        raise ValueError(f"unexpected {tokens[0]!r}")
    return value


def arithmetic(reading: str) -> str | None:
    """The value of a maths captcha's reading as text (`12/4=?` -> `3`, `7/2` -> `3.5`), or
    None when the reading is not an expression."""
    tokens = _tokens(reading)
    if tokens is None or not any(t in "+-*/" for t in tokens):
        return None  # a number alone: the operator was misread away
    try:
        value = _parse(tokens)
    except ValueError:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


ANSWERS = {"arithmetic": arithmetic}


def answer_function(name, key: str = "mode.answer"):
    """The function for `mode.answer` (None: no answers); an unknown name is an error naming
    `key`, the setting it came from."""
    if name is None:
        return None
    if name not in ANSWERS:
        raise ValueError(f"{key}={name!r}: unknown; choose from {list(ANSWERS)} or null")
    return ANSWERS[name]
