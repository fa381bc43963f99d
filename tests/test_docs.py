"""The API document and its docs page: the limits it states are this server's settings, and the
Swagger UI page works offline (every asset from the service itself, none from a CDN)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from starlette.testclient import TestClient

from bertserve.schemas import LIMITS, NOT_ONLY_SPACE


@pytest.fixture(scope="module")
def client():
    from service.service import app  # the routes alone: the page and the document need no model

    with TestClient(app) as http:
        yield http


class References(HTMLParser):
    """Every URL a page loads: `src` and `href` attributes, and URLs written in its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"""(?:https?:)?//[^\s"'`)]+""", data)
        self.urls += re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", data)


def test_the_docs_page_loads_only_what_the_service_serves(client):
    page = client.get("/docs/api")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text, "a page that reaches out of the service"
    references = References()
    references.feed(page.text)
    assert set(references.urls) >= {"/docs/api/assets/swagger-ui-bundle.js", "/docs/api/assets/swagger-ui.css",
                                    "/openapi.json"}, references.urls
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
    for url in references.urls:
        assert url.startswith("/"), f"{url} is not the service's own"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert kinds[url[url.rindex("."):]] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > (100_000 if url.endswith(".js") else 100), url
    assert "validatorUrl" in page.text  # no badge fetched from validator.swagger.io
    assert client.get("/docs/api/assets/nope.js").json()["error_type"] == "not_found"


def test_the_document_states_this_servers_limits(client):
    from service.service import SETTINGS

    def classify_texts() -> dict:
        document = client.get("/openapi.json").json()
        assert LIMITS not in str(document), "a limit left unfilled"
        schema = document["components"]["schemas"]["ClassifyRequest"]["properties"]["texts"]
        return schema

    texts = classify_texts()
    assert (texts["minItems"], texts["maxItems"]) == (1, SETTINGS.max_texts_per_request)
    assert texts["items"]["maxLength"] == SETTINGS.max_chars_per_text
    saved = SETTINGS.max_texts_per_request
    try:
        SETTINGS.max_texts_per_request = 5
        assert classify_texts()["maxItems"] == 5
    finally:
        SETTINGS.max_texts_per_request = saved


def test_not_only_whitespace_is_pythons_own_test():
    """The document's pattern for a text that is not empty is what the service checks (`str.strip`)."""
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert not any(re.search(NOT_ONLY_SPACE, c) for c in spaces)
    assert all(re.search(NOT_ONLY_SPACE, chr(c)) for c in range(0x110000)
               if not chr(c).isspace() and not 0xD800 <= c < 0xE000)
