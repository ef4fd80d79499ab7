"""./scripts/develop gives its gateway the router token it already holds while one is valid."""

from __future__ import annotations

from pathlib import Path

from i4t_gateway.identity import Identity
from i4t_gateway.tokens import open_token_book
from scripts.develop import gateway_token


def test_the_token_is_reused_until_it_is_revoked(tmp_path: Path) -> None:
    gateway = Identity.generate().address
    first = gateway_token(tmp_path, gateway)
    assert gateway_token(tmp_path, gateway) == first
    book, _ = open_token_book(tmp_path)
    assert len(book.rows()) == 1  # one start after another adds nothing to the book
    admission = book.admission(gateway)
    assert admission is not None
    assert book.revoke(admission.token_id)
    second = gateway_token(tmp_path, gateway)
    assert second != first
    assert book.admitted()[gateway.text][0] == second
