"""The Weaviate side of the search page: collections, their layout, queries and stored media.

Everything here is blocking (weaviate-client's sync API); the web server calls
it from worker threads. Errors a user can fix are ``ApiError`` with an HTTP
status and a message naming the item and the reason.

Stored media is sent only when it is safe to: a BLOB or a file whose bytes are
a media type the page shows, and a ``<field>_uri`` only inside the
collection's media roots (see ``access``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ib_vectorizer.modalities import Modality
from ib_vectorizer.retry import first_line

from ..connection import node_unreachable
from ..near import (
    NoSuchCollection,
    composed_vector,
    hybrid,
    imagebind_vector,
    near,
    open_collection,
)
from ..schema import MODALITY, PARENT_ID, SOURCE_ID, recorded_media_roots, uri_property
from .access import MediaFile, MediaRoots, allowed_url, is_web_url, open_media_file
from .detect import content_type, detect_modality
from .errors import ApiError

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
MAX_QUERY_ITEMS = 3  # a composed query: the page offers the first item and two more
SCAN_LIMIT = 1000  # hits looked through for a modality filter
THUMBNAIL_PX = 320
# Pixels a thumbnail's source may have when decoded: a JPEG decodes at 1/2 to 1/8 scale first,
# so only other formats (a PNG bomb of a few kilobytes) come near it.
MAX_THUMBNAIL_SOURCE_PIXELS = 32_000_000
LAYOUT_SECONDS = 5.0  # how long a collection's layout and media roots are trusted
# Weaviate's class-name rule (it capitalises a lower-case first letter itself).
COLLECTION_NAME = re.compile(r"[A-Za-z][_0-9A-Za-z]{0,254}")


def check_collection_name(name: Any) -> str:
    """``name`` if it is a Weaviate collection name, else ApiError 400 (before Weaviate sees it)."""
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ApiError(
            400,
            f"{shown} is not a collection name: a letter, then up to 254 letters, digits or _",
        )
    return name


@dataclass(frozen=True)
class ShownField:
    """One vectorized property as the page shows it: by its bytes, its URI, or its text."""

    name: str
    modality: Modality
    uri_property: str | None  # ``<name>_uri`` when the collection has it


@dataclass(frozen=True)
class Layout:
    """What a collection holds: media fields, the properties a hit shows (no BLOBs), and the
    folders ib-ingest recorded its stored URIs come from."""

    fields: tuple[ShownField, ...]
    properties: dict[str, str]  # name → Weaviate data type
    blobs: tuple[str, ...]
    media_roots: MediaRoots
    read_at: float  # time.monotonic() when read
    multi_tenant: bool = False

    def field(self, name: str) -> ShownField:
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
        ShownField(name, modality, uri_property(name) if uri_property(name) in types else None)
        for name, modality in sorted(modalities.items())
    )
    blobs = tuple(name for name, kind in types.items() if kind == "blob")
    shown = {name: kind for name, kind in types.items() if kind != "blob"}
    roots = MediaRoots.from_recorded(recorded_media_roots(config.description))
    multi_tenant = bool(config.multi_tenancy_config and config.multi_tenancy_config.enabled)
    return Layout(fields, shown, blobs, roots, time.monotonic(), multi_tenant)


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
    """What the media endpoint sends: bytes, an open local file (the sender closes it), or a URL
    to redirect to."""

    content_type: str
    data: bytes | None = None
    file: MediaFile | None = None
    url: str | None = None


@dataclass(frozen=True)
class Shown:
    """How a hit's media field appears on the page: its content type, or why it is not sent."""

    content_type: str = ""
    uri: str | None = None
    refused: str | None = None


class SearchService:
    """The JSON API's answers, over a Weaviate client from ``connect``.

    ``connect`` is called again after a failure, so the page recovers when an
    unreachable Weaviate comes back; it raises with the reason when it cannot.
    With ``tenant``, every query and media read goes to that tenant of a
    multi-tenant collection. ``vectorizer_url`` (our inference server) embeds
    the items of composed queries; without it only single queries are answered.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        default_collection: str,
        consistency_level: str | None = None,
        where: str = "Weaviate",
        media_roots: MediaRoots | None = None,
        tenant: str | None = None,
        vectorizer_url: str | None = None,
    ) -> None:
        self._connect = connect
        self.tenant = tenant or None
        self.vectorizer_url = vectorizer_url or None
        self._client = None
        self._lock = threading.Lock()
        self.default_collection = default_collection
        self._consistency = consistency_level
        self._where = where
        self.media_roots = media_roots or MediaRoots()  # --media-root, for every collection
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
        """The collection, bound to ``tenant`` when there is one (queries and reads alike)."""
        check_collection_name(name)
        try:
            found = self._weaviate(lambda: open_collection(self.client(), name, self._consistency))
        except NoSuchCollection as err:
            raise ApiError(404, str(err)) from None
        return found.with_tenant(self.tenant) if self.tenant else found

    def layout(self, name: str) -> Layout:
        """The collection's layout, read again after LAYOUT_SECONDS (a new ingest adds roots);
        with a tenant, checked to hold it, so a wrong one is said plainly, not by Weaviate."""
        check_collection_name(name)
        known = self._layouts.get(name)
        if known is None or time.monotonic() - known.read_at > LAYOUT_SECONDS:
            collection = self.collection(name)
            read = self._weaviate(lambda: read_layout(collection))
            if self.tenant:
                self._check_tenant(name, collection, read)
            self._layouts[name] = known = read
        return known

    def _check_tenant(self, name: str, collection, layout: Layout) -> None:
        """ApiError unless the collection holds this server's tenant: Weaviate's own answer
        would be a failed query, not what to change."""
        if not layout.multi_tenant:
            raise ApiError(
                400,
                f"collection {name} is not multi-tenant: this ib-search (--tenant "
                f"{self.tenant}) searches multi-tenant collections only",
            )
        if not self._weaviate(lambda: collection.tenants.exists(self.tenant)):
            raise ApiError(404, f"collection {name} has no tenant {self.tenant!r}")

    def roots(self, layout: Layout) -> MediaRoots:
        return layout.media_roots | self.media_roots

    # -- answers ---------------------------------------------------------------------------------

    def collections(self) -> dict:
        """The collections, and what this server adds to every query: its tenant, and whether
        it can compose queries (it knows our inference server)."""
        names = self._weaviate(lambda: sorted(self.client().collections.list_all(simple=True)))
        return {
            "collections": names,
            "default": self.default_collection,
            "tenant": self.tenant,
            "composed": self.vectorizer_url is not None,
        }

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
        vector = self._weaviate(lambda: imagebind_vector(collection))  # once, not per page
        kind, value = request.kind, request.value
        if request.items:  # embedded once here, whatever the pages scanned below
            kind, value = "vector", self._composed(request)
        scan_for = request.modality
        if scan_for is not None and MODALITY in layout.properties:  # exact, in Weaviate
            from weaviate.classes.query import Filter

            by_modality = Filter.by_property(MODALITY).contains_any([scan_for])
            filters = by_modality if filters is None else Filter.all_of([filters, by_modality])
            scan_for = None  # collections made before the property: filtered here, below

        def page(offset: int, limit: int) -> list[dict]:
            options = {
                "limit": limit,
                "offset": offset,
                "filters": filters,
                "return_properties": shown,
                "target_vector": vector,
            }
            if request.alpha is not None:
                return self._weaviate(
                    lambda: hybrid(collection, str(value), request.alpha, **options)
                )
            try:
                return self._weaviate(lambda: near(collection, kind, value, **options))
            except ApiError as err:
                if err.status != 400 or not isinstance(value, bytes):
                    raise
                raise ApiError(  # a file Weaviate's vectorizer module refused: name it
                    400,
                    f"{request.filename}: Weaviate's vectorizer could not use it as {kind} "
                    f"({err.message.removeprefix('Weaviate could not run the query: ')})",
                ) from None

        if scan_for is None:
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
                    if any(m["modality"] == scan_for for m in hit["media"]):
                        hits.append(hit)
                if len(found) < batch:
                    break
            more = len(hits) > request.offset + request.limit
            hits = hits[request.offset : request.offset + request.limit]
        answer = {
            "collection": request.collection,
            "query": "hybrid" if request.alpha is not None else request.kind,
            "offset": request.offset,
            "limit": request.limit,
            "more": more,
            "results": hits,
        }
        if request.alpha is not None:
            answer["alpha"] = request.alpha
        if request.items:
            answer["weights"] = list(request.weights)
        return answer

    def _composed(self, request: SearchRequest) -> np.ndarray:
        """The composed query's vector, from our inference server's vectors of its items."""
        if self.vectorizer_url is None:
            raise ApiError(
                400,
                "composed queries need our inference server to embed their items: start "
                "ib-search with --vectorizer-url URL (the server Weaviate's multi2vec-bind uses)",
            )
        try:
            return composed_vector(
                request.items, vectorizer_url=self.vectorizer_url, weights=request.weights
            )
        except ValueError as err:  # an item the server refused, or weights that cancel out
            raise ApiError(400, str(err)) from None

    def _with_media(self, name: str, layout: Layout, hits: list[dict]) -> list[dict]:
        """Each hit as the page shows it: ids, distance (a hybrid search: a score instead),
        properties and its media."""
        shown = list(self._pool.map(lambda hit: self._shown(name, layout, hit), hits))
        return [
            {
                "id": hit["id"],
                "source_id": hit["properties"].get(SOURCE_ID),
                "parent_id": hit["properties"].get(PARENT_ID),
                "distance": hit.get("distance"),
                **({"score": hit["score"]} if "score" in hit else {}),
                "properties": hit["properties"],
                "media": _media_entries(name, layout, hit, media),
            }
            for hit, media in zip(hits, shown, strict=True)
        ]

    def _shown(self, name: str, layout: Layout, hit: dict) -> dict[str, Shown]:
        """Each media field a hit has, checked as the media endpoint would check it, so the page
        can say why one is not shown instead of showing a broken player."""
        blobs = self._blobs(name, layout, hit["id"])
        shown: dict[str, Shown] = {}
        for field in layout.fields:
            what = f"{field.name} of object {hit['id']}"
            if field.name in blobs:
                kind = blobs[field.name]
                refused = None if kind else f"{what}: {_NOT_MEDIA}"
                shown[field.name] = Shown(kind or "", refused=refused)
                continue
            uri = hit["properties"].get(field.uri_property) if field.uri_property else None
            if not isinstance(uri, str) or not uri:
                continue
            try:
                found = self._stored_uri(layout, f"{field.uri_property} of object {hit['id']}", uri)
            except ApiError as err:
                shown[field.name] = Shown(uri=uri, refused=err.message)
                continue
            if found.file is not None:
                found.file.close()
            shown[field.name] = Shown(found.content_type, uri=uri)
        return shown

    def _stored_uri(self, layout: Layout, what: str, uri: str) -> Media:
        """The media a stored URI names, checked against the collection's media roots."""
        roots = self.roots(layout)
        if is_web_url(uri):
            return Media("", url=allowed_url(uri, roots, what))
        found = open_media_file(uri, roots, what)
        return Media(found.content_type, file=found)

    def _blobs(self, name: str, layout: Layout, uuid: str) -> dict[str, str]:
        """The BLOB fields ``uuid`` holds, with their content types ("" when the bytes are not
        media the page shows); the bytes are kept in the cache."""
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
                kinds[field] = content_type(data) or ""
        return kinds

    def media(self, name: str, uuid: str, field_name: str, thumbnail: bool = False) -> Media:
        """The stored media of one field: its bytes, the file its URI names, or the URI (only
        ever media inside the collection's roots, of a type the page shows)."""
        layout = self.layout(name)
        field = layout.field(field_name)
        if field.modality is Modality.TEXT:
            raise ApiError(404, f"{field_name!r} holds text, not media")
        _check_uuid(uuid)
        thumbnail = thumbnail and field.modality in PICTURES
        if field.name in layout.blobs:
            kinds = self._blobs(name, layout, uuid)
            if field.name in kinds:
                if not kinds[field.name]:
                    raise ApiError(415, f"{field.name} of object {uuid}: {_NOT_MEDIA}")
                data = self._cache.get((name, uuid, field.name))[1]
                if data is None:  # dropped from the cache since: read it again
                    self._blobs(name, layout, uuid)
                    data = self._cache.get((name, uuid, field.name))[1] or b""
                media = Media(kinds[field.name], data=data)
                return self._thumbnail(name, uuid, field.name, media) if thumbnail else media
        if field.uri_property:
            collection = self.collection(name)
            found = self._weaviate(
                lambda: collection.query.fetch_object_by_id(
                    uuid, return_properties=[field.uri_property]
                )
            )
            uri = found.properties.get(field.uri_property) if found is not None else None
            if uri and isinstance(uri, str):
                what = f"{field.uri_property} of object {uuid}"
                media = self._stored_uri(layout, what, uri)
                if thumbnail and media.file is not None:
                    return self._thumbnail(name, uuid, field.name, media)
                return media
        raise ApiError(404, f"object {uuid} has no {field_name!r} media")

    def _thumbnail(self, name: str, uuid: str, field_name: str, media: Media) -> Media:
        """A small PNG of ``media``, or ``media`` itself when it is small or Pillow cannot
        read it (the browser may)."""
        key = (name, uuid, field_name, "thumbnail")
        hit, small = self._cache.get(key)
        if not hit:
            what = f"{field_name} of object {uuid}"
            try:
                if media.file is not None:
                    with media.file.reader() as stream:
                        small = make_thumbnail(stream, what)
                else:
                    small = make_thumbnail(media.data or b"", what)
            except BaseException:
                if media.file is not None:
                    media.file.close()
                raise
            self._cache.put(key, small)
        if small is None:
            return media
        if media.file is not None:
            media.file.close()
        return Media("image/png", data=small)


_NOT_MEDIA = "its bytes are not media the page shows (an image, audio, video or IMU file)"


def make_thumbnail(source: bytes | BinaryIO, what: str, size: int = THUMBNAIL_PX) -> bytes | None:
    """A PNG at most ``size`` pixels on a side (a 12 MP photo is not sent whole to a grid).

    None when the image is small already or Pillow cannot read it. The image's
    size is read from its header and bounded before anything is decoded: a
    source that would decode to more than MAX_THUMBNAIL_SOURCE_PIXELS is
    ApiError 413 (``what`` names it).
    """
    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    too_large = (
        f"{what}: the image is too large to thumbnail (over {MAX_THUMBNAIL_SOURCE_PIXELS:,} "
        "pixels when decoded"
    )
    try:
        with Image.open(stream) as image:
            if max(image.size) <= size:
                return None  # small already: sent as it is
            image.draft(None, (size, size))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale
            width, height = image.size
            if width * height > MAX_THUMBNAIL_SOURCE_PIXELS:
                raise ApiError(413, f"{too_large}: {width}×{height})")
            image.thumbnail((size, size))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=False)
            return out.getvalue()
    except Image.DecompressionBombError:  # Pillow's own bound, past 2 × 89 MP
        raise ApiError(413, f"{too_large})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class SearchRequest:
    """``POST /api/search``: one query (text, media, near_id, or weighted ``items`` composed
    into one vector), a page and a filter; ``alpha`` makes a text query a hybrid search."""

    collection: str
    kind: str  # text, object, a media label, or composed (then ``items`` and ``weights``)
    value: str | bytes
    offset: int = 0
    limit: int = 12
    modality: str | None = None  # only hits with media of this modality
    property: str | None = None  # only hits whose property matches value
    property_value: str | None = None
    items: tuple[tuple[str, str | bytes], ...] = ()  # a composed query's (kind, value)
    weights: tuple[float, ...] = ()
    alpha: float | None = None  # a hybrid search: 1 vector only, 0 keywords only
    filename: str = "the file"  # a file query's name, for what the page says about it

    @classmethod
    def parse(cls, body: Any) -> SearchRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        collection = body.get("collection")
        if collection in (None, ""):
            raise ApiError(400, "'collection' is missing: name the collection to search")
        check_collection_name(collection)
        given = [
            k for k in ("text", "media", "near_id", "items") if body.get(k) not in (None, "", [])
        ]
        if len(given) != 1:
            raise ApiError(
                400,
                "give exactly one query: 'text', 'media' (a file, base64), 'near_id' or "
                "'items' (a composed query)" + (f" (got {', '.join(given)})" if given else ""),
            )
        items: tuple[tuple[str, str | bytes], ...] = ()
        weights: tuple[float, ...] = ()
        if given[0] == "items":
            kind, value = "composed", ""
            items, weights = _items(body["items"])
        else:
            kind, value = _query(given[0], body)
        alpha = _alpha(body.get("alpha"), kind)
        filter_ = {} if body.get("filter") is None else body["filter"]
        if not isinstance(filter_, dict):
            raise ApiError(400, "'filter' must be an object: {modality, property, value}")
        modality = _text(filter_, "modality", "filter: 'modality'")
        if modality is not None:
            try:
                modality = Modality.parse(modality).label
            except ValueError as err:
                raise ApiError(400, f"filter: {err}") from None
        prop = _text(filter_, "property", "filter: 'property'")
        value_filter = filter_.get("value")
        if isinstance(value_filter, dict | list):
            raise ApiError(400, "filter: 'value' must be text, a number or a boolean")
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
            items=items,
            weights=weights,
            alpha=alpha,
            filename=str(body.get("filename") or "the file"),
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


def _items(given: Any) -> tuple[tuple[tuple[str, str | bytes], ...], tuple[float, ...]]:
    """A composed query's items, each text or a file (its modality detected as for 'media'),
    and their weights (default 1; a negative one subtracts)."""
    shape = "{text | media, modality?, filename?, weight?}"
    if not isinstance(given, list) or not 1 <= len(given) <= MAX_QUERY_ITEMS:
        raise ApiError(
            400, f"'items' must be a list of 1 to {MAX_QUERY_ITEMS} query items: {shape}"
        )
    items, weights = [], []
    for number, item in enumerate(given, start=1):
        if not isinstance(item, dict):
            raise ApiError(400, f"query item {number} must be an object: {shape}")
        keys = [k for k in ("text", "media") if item.get(k) not in (None, "")]
        if len(keys) != 1:
            raise ApiError(400, f"query item {number}: give 'text' or 'media' (a file, base64)")
        try:
            items.append(_query(keys[0], item))
        except ApiError as err:
            raise ApiError(err.status, f"query item {number}: {err.message}") from None
        weight = item.get("weight", 1)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
        ):
            raise ApiError(400, f"query item {number}: 'weight' must be a number, not {weight!r}")
        weights.append(float(weight))
    return tuple(items), tuple(weights)


def _alpha(given: Any, kind: str) -> float | None:
    """A hybrid search's alpha, from 0 (keywords only) to 1 (vector only); only for text."""
    if given is None:
        return None
    if (
        isinstance(given, bool)
        or not isinstance(given, int | float)
        or not 0.0 <= given <= 1.0  # NaN fails this too
    ):
        raise ApiError(
            400, f"'alpha' must be a number from 0 (keywords) to 1 (vector), not {given!r}"
        )
    if kind != "text":
        raise ApiError(400, "'alpha' (a hybrid search) needs a 'text' query: keywords are text")
    return float(given)


def _text(body: dict, key: str, name: str) -> str | None:
    """``body[key]`` when it is a non-empty string; None when absent or empty; else 400."""
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, not {type(value).__name__}")
    return value


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


def _stored(field: ShownField, layout: Layout) -> str:
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


def _media_entries(name: str, layout: Layout, hit: dict, media: dict[str, Shown]) -> list[dict]:
    """The hit's media as the page lists them: a ``url`` to load, or ``refused`` saying why not."""
    properties = hit["properties"]
    start, end = properties.get("segment_start_s"), properties.get("segment_end_s")
    entries = []
    for field in layout.fields:
        entry: dict[str, Any] = {"field": field.name, "modality": field.modality.label}
        if field.modality is Modality.TEXT:
            if properties.get(field.name):
                entries.append({**entry, "text": properties[field.name]})
            continue
        shown = media.get(field.name)
        if shown is None:
            continue
        entry["content_type"] = shown.content_type
        if shown.uri is not None:
            entry["uri"] = shown.uri
        if shown.refused is not None:
            entry["refused"] = shown.refused
        else:
            entry["url"] = f"/api/media/{name}/{hit['id']}/{field.name}"
        if start is not None and end is not None:
            entry["start"], entry["end"] = start, end
        entries.append(entry)
    return entries
