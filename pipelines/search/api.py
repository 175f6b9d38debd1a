"""The Weaviate side of the search page: collections, their layout, queries and stored media.

Everything here is blocking (weaviate-client's sync API); the web server calls
it from worker threads. Errors a user can fix are ``ApiError`` with an HTTP
status and a message naming the item and the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import mimetypes
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ib_vectorizer.modalities import Modality
from ib_vectorizer.retry import first_line

from ..connection import node_unreachable
from ..near import NoSuchCollection, near, open_collection
from ..schema import PARENT_ID, SOURCE_ID
from .detect import content_type, detect_modality

# multi2vec-bind's config keys, as Weaviate returns them, for each modality.
CONFIG_KEYS = {
    "textFields": Modality.TEXT,
    "imageFields": Modality.VISION,
    "audioFields": Modality.AUDIO,
    "videoFields": Modality.VIDEO,
    "depthFields": Modality.DEPTH,
    "thermalFields": Modality.THERMAL,
    "imuFields": Modality.IMU,
    "IMUFields": Modality.IMU,
}
PICTURES = (Modality.VISION, Modality.DEPTH, Modality.THERMAL)  # shown as thumbnails
MAX_LIMIT = 100
SCAN_LIMIT = 1000  # hits looked through for a modality filter
THUMBNAIL_PX = 320


class ApiError(Exception):
    """A request the page can show the reason for: ``status`` 4xx, or 502/503 for Weaviate."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class MediaField:
    """One vectorized property as the page shows it: by its bytes, its URI, or its text."""

    name: str
    modality: Modality
    uri_property: str | None  # ``<name>_uri`` when the collection has it


@dataclass(frozen=True)
class Layout:
    """What a collection holds: media fields and the properties a hit shows (no BLOBs)."""

    fields: tuple[MediaField, ...]
    properties: dict[str, str]  # name → Weaviate data type
    blobs: tuple[str, ...]

    def field(self, name: str) -> MediaField:
        for field in self.fields:
            if field.name == name:
                return field
        raise ApiError(404, f"{name!r} is not a media field of this collection")


def read_layout(collection) -> Layout:
    """The layout from the collection's multi2vec-bind config and its properties."""
    config = collection.config.get()
    types = {p.name: p.data_type.value for p in config.properties}
    modalities: dict[str, Modality] = {}
    for vector in (config.vector_config or {}).values():
        for key, names in (vector.vectorizer.model or {}).items():
            if key in CONFIG_KEYS:
                for name in names:
                    modalities[name if isinstance(name, str) else name["name"]] = CONFIG_KEYS[key]
    fields = tuple(
        MediaField(name, modality, f"{name}_uri" if f"{name}_uri" in types else None)
        for name, modality in sorted(modalities.items())
    )
    blobs = tuple(name for name, kind in types.items() if kind == "blob")
    shown = {name: kind for name, kind in types.items() if kind != "blob"}
    return Layout(fields, shown, blobs)


class BlobCache:
    """Recently read media bytes (and thumbnails), bounded in bytes and age.

    A results page reads each hit's stored media once to learn which fields it
    has; the thumbnails and players the page then asks for come from here.
    """

    def __init__(self, max_bytes: int = 256 << 20, max_age_s: float = 300.0) -> None:
        self._items: OrderedDict[tuple, tuple[float, bytes | None]] = OrderedDict()
        self._size = 0
        self._max_bytes, self._max_age_s = max_bytes, max_age_s
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bool, bytes | None]:
        with self._lock:
            entry = self._items.get(key)
            if entry is None or time.monotonic() - entry[0] > self._max_age_s:
                return False, None
            self._items.move_to_end(key)
            return True, entry[1]

    def put(self, key: tuple, value: bytes | None) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self._size -= len(old[1] or b"") if old else 0
            self._items[key] = (time.monotonic(), value)
            self._size += len(value or b"")
            while self._size > self._max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= len(dropped or b"")


@dataclass(frozen=True)
class Media:
    """What the media endpoint sends: bytes, a local file, or a URL to redirect to."""

    content_type: str
    data: bytes | None = None
    path: Path | None = None
    url: str | None = None


class SearchService:
    """The JSON API's answers, over a Weaviate client from ``connect``.

    ``connect`` is called again after a failure, so the page recovers when an
    unreachable Weaviate comes back; it raises with the reason when it cannot.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        default_collection: str,
        consistency_level: str | None = None,
        where: str = "Weaviate",
    ) -> None:
        self._connect = connect
        self._client = None
        self._lock = threading.Lock()
        self.default_collection = default_collection
        self._consistency = consistency_level
        self._where = where
        self._layouts: dict[str, Layout] = {}
        self._cache = BlobCache()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="ib-search-media")

    # -- connection ------------------------------------------------------------------------------

    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as err:
                    raise ApiError(503, f"cannot reach {self._where}: {first_line(err)}") from None
            return self._client

    def _weaviate(self, call: Callable[[], Any]) -> Any:
        """``call()``, with Weaviate's failures turned into messages for the page."""
        from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateQueryError

        try:
            return call()
        except (ApiError, NoSuchCollection):
            raise
        except Exception as err:
            if node_unreachable(err):
                self._forget_client()
                raise ApiError(503, f"cannot reach {self._where}: {first_line(err)}") from None
            if isinstance(err, WeaviateQueryError):
                raise ApiError(
                    400, f"Weaviate could not run the query: {first_line(err)}"
                ) from None
            if isinstance(err, UnexpectedStatusCodeError):
                raise ApiError(
                    502, f"Weaviate answered {err.status_code}: {first_line(err)}"
                ) from None
            raise

    def _forget_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a client whose server is gone
                client.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._forget_client()

    def collection(self, name: str):
        try:
            return self._weaviate(lambda: open_collection(self.client(), name, self._consistency))
        except NoSuchCollection as err:
            raise ApiError(404, str(err)) from None

    def layout(self, name: str) -> Layout:
        if name not in self._layouts:
            collection = self.collection(name)
            self._layouts[name] = self._weaviate(lambda: read_layout(collection))
        return self._layouts[name]

    # -- answers ---------------------------------------------------------------------------------

    def collections(self) -> dict:
        names = self._weaviate(lambda: sorted(self.client().collections.list_all(simple=True)))
        return {"collections": names, "default": self.default_collection}

    def info(self, name: str) -> dict:
        layout = self.layout(name)
        return {
            "collection": name,
            "properties": [{"name": n, "type": t} for n, t in sorted(layout.properties.items())],
            "media": [
                {"field": f.name, "modality": f.modality.label, "stored": _stored(f, layout)}
                for f in layout.fields
            ],
            "modalities": sorted({f.modality.label for f in layout.fields}),
        }

    def search(self, body: Any) -> dict:
        request = SearchRequest.parse(body)
        layout = self.layout(request.collection)
        collection = self.collection(request.collection)
        filters = request.weaviate_filter(layout)
        shown = list(layout.properties)

        def page(offset: int, limit: int) -> list[dict]:
            return self._weaviate(
                lambda: near(
                    collection,
                    request.kind,
                    request.value,
                    limit=limit,
                    offset=offset,
                    filters=filters,
                    return_properties=shown,
                )
            )

        if request.modality is None:
            hits = page(request.offset, request.limit + 1)
            more = len(hits) > request.limit
            hits = self._with_media(request.collection, layout, hits[: request.limit])
        else:
            wanted, scanned, hits = request.offset + request.limit + 1, 0, []
            batch = max(2 * request.limit, 20)
            while len(hits) < wanted and scanned < SCAN_LIMIT:
                found = page(scanned, batch)
                scanned += len(found)
                for hit in self._with_media(request.collection, layout, found):
                    if any(m["modality"] == request.modality for m in hit["media"]):
                        hits.append(hit)
                if len(found) < batch:
                    break
            more = len(hits) > request.offset + request.limit
            hits = hits[request.offset : request.offset + request.limit]
        return {
            "collection": request.collection,
            "query": request.kind,
            "offset": request.offset,
            "limit": request.limit,
            "more": more,
            "results": hits,
        }

    def _with_media(self, name: str, layout: Layout, hits: list[dict]) -> list[dict]:
        """Each hit as the page shows it: ids, distance, properties and its media."""
        present = list(self._pool.map(lambda hit: self._blobs(name, layout, hit["id"]), hits))
        return [
            {
                "id": hit["id"],
                "source_id": hit["properties"].get(SOURCE_ID),
                "parent_id": hit["properties"].get(PARENT_ID),
                "distance": hit["distance"],
                "properties": hit["properties"],
                "media": _media_entries(name, layout, hit, blobs),
            }
            for hit, blobs in zip(hits, present, strict=True)
        ]

    def _blobs(self, name: str, layout: Layout, uuid: str) -> dict[str, str]:
        """The BLOB fields ``uuid`` holds, with their content types (bytes kept in the cache)."""
        fields = [f.name for f in layout.fields if f.name in layout.blobs]
        missing = [f for f in fields if not self._cache.get((name, uuid, f))[0]]
        if missing:
            collection = self.collection(name)
            found = self._weaviate(
                lambda: collection.query.fetch_object_by_id(uuid, return_properties=missing)
            )
            properties = found.properties if found is not None else {}
            for field in missing:
                value = properties.get(field)
                self._cache.put((name, uuid, field), _blob_bytes(value))
        kinds = {}
        for field in fields:
            data = self._cache.get((name, uuid, field))[1]
            if data:
                kinds[field] = content_type(data) or "application/octet-stream"
        return kinds

    def media(self, name: str, uuid: str, field_name: str, thumbnail: bool = False) -> Media:
        """The stored media of one field: its bytes, the file its URI names, or the URI."""
        layout = self.layout(name)
        field = layout.field(field_name)
        if field.modality is Modality.TEXT:
            raise ApiError(404, f"{field_name!r} holds text, not media")
        _check_uuid(uuid)
        if field.name in layout.blobs:
            kinds = self._blobs(name, layout, uuid)
            if field.name in kinds:
                data = self._cache.get((name, uuid, field.name))[1]
                if data is None:  # dropped from the cache since: read it again
                    self._blobs(name, layout, uuid)
                    data = self._cache.get((name, uuid, field.name))[1] or b""
                if thumbnail and field.modality in PICTURES:
                    return self._thumbnail(name, uuid, field.name, data)
                return Media(kinds[field.name], data=data)
        if field.uri_property:
            collection = self.collection(name)
            found = self._weaviate(
                lambda: collection.query.fetch_object_by_id(
                    uuid, return_properties=[field.uri_property]
                )
            )
            uri = found.properties.get(field.uri_property) if found is not None else None
            if uri:
                found = _media_at(uri)
                if thumbnail and field.modality in PICTURES and found.path is not None:
                    return self._thumbnail(name, uuid, field.name, found.path.read_bytes())
                return found
        raise ApiError(404, f"object {uuid} has no {field_name!r} media")

    def _thumbnail(self, name: str, uuid: str, field: str, data: bytes) -> Media:
        key = (name, uuid, field, "thumbnail")
        hit, small = self._cache.get(key)
        if not hit:
            small = make_thumbnail(data)
            self._cache.put(key, small)
        if small is None:  # small already, or Pillow cannot read it (the browser may)
            return Media(content_type(data) or "application/octet-stream", data=data)
        return Media("image/png", data=small)


def make_thumbnail(data: bytes, size: int = THUMBNAIL_PX) -> bytes | None:
    """A PNG at most ``size`` pixels on a side (a 12 MP photo is not sent whole to a grid)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= size:
                return None  # small already: sent as it is
            image.thumbnail((size, size))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=False)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class SearchRequest:
    """``POST /api/search``: one query (text, media or near_id), a page and a filter."""

    collection: str
    kind: str  # text, object, or a media label
    value: str | bytes
    offset: int = 0
    limit: int = 12
    modality: str | None = None  # only hits with media of this modality
    property: str | None = None  # only hits whose property matches value
    property_value: str | None = None

    @classmethod
    def parse(cls, body: Any) -> SearchRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        collection = body.get("collection")
        if not isinstance(collection, str) or not collection:
            raise ApiError(400, "'collection' is missing: name the collection to search")
        given = [k for k in ("text", "media", "near_id") if body.get(k) not in (None, "")]
        if len(given) != 1:
            raise ApiError(
                400,
                "give exactly one query: 'text', 'media' (a file, base64) or 'near_id'"
                + (f" (got {', '.join(given)})" if given else ""),
            )
        kind, value = _query(given[0], body)
        filter_ = body.get("filter") or {}
        if not isinstance(filter_, dict):
            raise ApiError(400, "'filter' must be an object: {modality, property, value}")
        modality = filter_.get("modality") or None
        if modality is not None:
            try:
                modality = Modality.parse(str(modality)).label
            except ValueError as err:
                raise ApiError(400, f"filter: {err}") from None
        prop = filter_.get("property") or None
        value_filter = filter_.get("value")
        if prop is not None and value_filter in (None, ""):
            raise ApiError(400, f"filter: give a value for property {prop!r}")
        return cls(
            collection,
            kind,
            value,
            offset=_integer(body, "offset", 0, 0, 10_000),
            limit=_integer(body, "limit", 12, 1, MAX_LIMIT),
            modality=modality,
            property=prop,
            property_value=None if value_filter is None else str(value_filter),
        )

    def weaviate_filter(self, layout: Layout):
        """A Weaviate filter on ``property``: text with ``*`` wildcards, numbers, booleans."""
        if self.property is None:
            return None
        from weaviate.classes.query import Filter

        kind = layout.properties.get(self.property)
        if kind is None:
            names = ", ".join(sorted(layout.properties))
            raise ApiError(400, f"filter: no property {self.property!r} to filter on ({names})")
        where, value = Filter.by_property(self.property), self.property_value or ""
        try:
            if kind in ("int", "number"):
                return where.equal(int(value) if kind == "int" else float(value))
            if kind == "boolean":
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return where.equal(value.lower() == "true")
        except ValueError:
            message = f"filter: {value!r} is not a {kind} for {self.property!r}"
            raise ApiError(400, message) from None
        if kind == "text":
            return where.like(value)
        raise ApiError(400, f"filter: property {self.property!r} ({kind}) cannot be filtered on")


def _query(key: str, body: dict) -> tuple[str, str | bytes]:
    value = body[key]
    if key == "text":
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, "'text' must be a non-empty string")
        return "text", value
    if key == "near_id":
        _check_uuid(value)
        return "object", value
    if not isinstance(value, str):
        raise ApiError(400, "'media' must be the file's bytes in base64")
    try:
        data = base64.b64decode(value.split(",", 1)[-1], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "'media' is not valid base64") from None
    name = body.get("filename") or "the file"
    if not data:
        raise ApiError(400, f"{name} is empty")
    chosen = body.get("modality") or "auto"
    if chosen == "auto":
        try:
            modality = detect_modality(data)
        except ValueError as err:
            raise ApiError(415, f"unsupported file {name}: {err}") from None
    else:
        try:
            modality = Modality.parse(str(chosen))
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        if modality is Modality.TEXT:
            raise ApiError(400, "a text query goes in 'text', not as a file")
    return modality.label, data


def _integer(body: dict, key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be an integer from {low} to {high}, not {value!r}")
    return value


def _check_uuid(value: Any) -> None:
    import uuid

    try:
        uuid.UUID(str(value))
    except ValueError:
        raise ApiError(400, f"{value!r} is not an object id (a UUID)") from None


def _stored(field: MediaField, layout: Layout) -> str:
    """How the page gets a field: ``text``, ``blob``, ``uri``, or ``blob or uri``."""
    if field.modality is Modality.TEXT:
        return "text"
    has = {"blob": field.name in layout.blobs, "uri": field.uri_property is not None}
    ways = [way for way, present in has.items() if present]
    return " or ".join(ways)


def _blob_bytes(value: Any) -> bytes | None:
    if not value:
        return None
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError):
        return None


def _media_entries(name: str, layout: Layout, hit: dict, blobs: dict[str, str]) -> list[dict]:
    properties = hit["properties"]
    start, end = properties.get("segment_start_s"), properties.get("segment_end_s")
    entries = []
    for field in layout.fields:
        entry: dict[str, Any] = {"field": field.name, "modality": field.modality.label}
        if field.modality is Modality.TEXT:
            if properties.get(field.name):
                entries.append({**entry, "text": properties[field.name]})
            continue
        if field.name in blobs:
            entry["content_type"] = blobs[field.name]
        elif field.uri_property and properties.get(field.uri_property):
            uri = properties[field.uri_property]
            entry["content_type"] = mimetypes.guess_type(urlparse(uri).path)[0] or ""
            entry["uri"] = uri
        else:
            continue
        entry["url"] = f"/api/media/{name}/{hit['id']}/{field.name}"
        if start is not None and end is not None:
            entry["start"], entry["end"] = start, end
        entries.append(entry)
    return entries


def _media_at(uri: str) -> Media:
    """A stored URI as a response: a local file is sent, an http(s) URL redirected to."""
    parsed = urlparse(uri)
    guessed = mimetypes.guess_type(parsed.path)[0] or "application/octet-stream"
    if parsed.scheme in ("http", "https"):
        return Media(guessed, url=uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        if not path.is_file():
            raise ApiError(404, f"the stored file {uri} is not there any more")
        with path.open("rb") as head:
            sniffed = content_type(head.read(4096))
        return Media(sniffed or guessed, path=path)
    raise ApiError(404, f"cannot serve {parsed.scheme}:// media ({uri}) from this page")
