"""Checkpoint and part objects in S3, next to the file's results (or retry rows).

Layout for ``incoming/<path>``: ``results/<path>/_state/checkpoint.json``,
``results/<path>/_state/outcomes-<run>-00001.csv`` … and
``retry/<path>/_state/retry-<run>-00001.jsonl`` … (retry parts hold tokens, so they live under
the retry prefix with its encryption and expiry). ``<run>`` is drawn by each invocation: two
running at once (a new upload, a duplicate event) never write each other's parts, and the
checkpoint lists every part by its key.

The checkpoint is written with S3's conditional writes: created only if absent, then replaced
only if it is still the one this run last read or wrote. An import whose checkpoint another one
replaced (a newer upload of the key, or the same event delivered twice at once) learns so at its
next write, before it sends anything past its lease, and stops (``Superseded``).

Next to it, ``_state/handoff.json`` (written before chunks go to the posting threads) narrows
what the last checkpoint's lease leaves in doubt (``Handoff``). It is written conditionally too:
replaced only if it is still the record this run loaded or last wrote, so that of two
invocations resuming one import, one alone hands chunks over.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from bulk_import.errors import Superseded, aws_error_code
from bulk_import.model import Checkpoint, DoneChunk, Handoff, Manifest
from bulk_import.model.checkpoint import older_than, same_upload
from bulk_import.storage.aws import fetch
from bulk_import.storage.keys import (
    CHECKPOINT_NAME,
    HANDOFF_NAME,
    MANIFEST_NAME,
    PART_NAME,
    STATE_DIR,
    outcome_part_key,
    retry_part_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


# What S3 answers a conditional write that lost: the object changed (412), is gone (404), or
# another conditional write to it is in progress (409).
_LOST = frozenset({"PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"})
JSON = "application/json"


class CheckpointStore:
    def __init__(
        self, s3: S3Client, bucket: str, results_prefix: str, retry_prefix: str, run: str
    ) -> None:
        self.s3 = s3
        self._bucket = bucket
        self._results = results_prefix
        self._retry = retry_prefix
        self._run = run
        self.key = results_prefix + STATE_DIR + CHECKPOINT_NAME
        self.handoff_key = results_prefix + STATE_DIR + HANDOFF_NAME
        self._etag: str | None = None  # of the checkpoint this run last read or wrote
        self._writes = 0  # checkpoints this run has written: each write is "<run>:<n>"
        self.write_id = ""  # the ``write`` of the checkpoint this run last read or wrote
        self._handoff_loaded = False  # the record was read (a resume), or written, by this run
        self._handoff_etag: str | None = None  # of that record; None: there was none
        self._handoffs = 0
        # Checkpoint and hand-off record writes, one at a time: a record may be written on a
        # thread of its own (``run/handoff.py``) while the reading thread saves a checkpoint.
        self._writing = threading.Lock()
        self._failed = False  # the last checkpoint write raised

    def load(self) -> Checkpoint | None:
        stored = self._stored()
        if stored is None:
            return None
        checkpoint, self._etag = stored
        self.write_id = checkpoint.write
        return checkpoint

    def load_handoff(self) -> Handoff | None:
        stored = self._stored_handoff()
        self._handoff_loaded = True
        self._handoff_etag = None if stored is None else stored[1]
        return None if stored is None else stored[0]

    def save_handoff(self, below: int, done: list[DoneChunk], refines: str | None = None) -> bool:
        """No chunk numbered ``below`` or more goes to the posting threads before the next
        write (stored before the chunks it lets through are handed over); ``done``: the chunks
        answered since the checkpoint this run last read or wrote. False, with nothing written,
        when ``refines`` names another write than that checkpoint's (a record written on another
        thread, overtaken by a checkpoint), or the last checkpoint write failed.

        Replaces only the record this run loaded or last wrote: another invocation's record
        written meanwhile means it hands this import's chunks over too (``Superseded``). A run
        that loaded none (a fresh import) replaces one an older import of the key left.
        """
        with self._writing:
            if refines is not None and (refines != self.write_id or self._failed):
                return False
            self._handoffs += 1
            write = f"{self._run}:h{self._handoffs}"
            body = Handoff(write=write, refines=self.write_id, below=below, done=done)
            json = body.model_dump_json()
            try:
                self._handoff_etag = self._put_if(self.handoff_key, json, self._handoff_etag)
            except ClientError as exc:
                if aws_error_code(exc) not in _LOST:
                    raise
                stored = self._stored_handoff()
                if stored is not None and stored[0].write == write:  # S3's answer was lost
                    self._handoff_etag = stored[1]
                elif not self._handoff_loaded and stored and stored[0].refines != self.write_id:
                    self._handoff_etag = self._put_if(
                        self.handoff_key, json, stored[1]
                    )  # older import's
                else:
                    msg = "another invocation is handing this import's chunks over"
                    raise Superseded(msg) from None
            self._handoff_loaded = True
            return True

    def _put_if(self, key: str, body: str, etag: str | None) -> str:
        """Store ``body`` at ``key`` only if S3 holds ``etag`` there (None: only if nothing is
        there); the new ETag."""
        if etag is None:
            response = self.s3.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType=JSON, IfNoneMatch="*"
            )
        else:
            response = self.s3.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType=JSON, IfMatch=etag
            )
        return response["ETag"]

    def _stored_handoff(self) -> tuple[Handoff, str] | None:
        fetched = self._fetch(self.handoff_key)
        return None if fetched is None else (Handoff.model_validate_json(fetched[0]), fetched[1])

    def save(self, checkpoint: Checkpoint) -> None:
        with self._writing:  # not while a hand-off record is being written
            # Until this write is stored: a record written ahead (``refines``) must not follow a
            # checkpoint write that failed (another import may have taken the key over).
            self._failed = True
            self._writes += 1
            write = f"{self._run}:{self._writes}"
            body = checkpoint.model_copy(update={"write": write}).model_dump_json()
            try:
                # Created only if absent, else replaced only if still the one this run last read
                # or wrote.
                etag = self._put_if(self.key, body, self._etag)
            except ClientError as exc:
                if aws_error_code(exc) not in _LOST:
                    raise
                stored = self._stored()
                if stored is not None and stored[0].write == write:
                    # A write whose answer was lost (a timeout, a dropped connection) is retried by
                    # botocore; the first attempt was stored, so the retry's condition failed on it.
                    self._etag = stored[1]
                    self.write_id = write
                    self._failed = False
                    return
                if stored is not None and stored[0].write.startswith(f"{self._run}:"):
                    # Still this run's previous write: the new one may yet land (an attempt still
                    # in flight at S3). Not a takeover; the invocation fails and Lambda's retry
                    # resumes from whichever is stored (nothing was sent past either's lease).
                    raise
                raise self.taken_over(checkpoint) from None
            self._etag = etag
            self.write_id = write
            self._failed = False

    def taken_over(self, mine: Checkpoint) -> Superseded:
        """Why the checkpoint S3 holds is not ``mine`` (a conditional write of it failed, or
        ``still_mine`` said so), naming the newer upload that took the key over, if any."""
        fetched = self._stored()
        stored = fetched[0] if fetched is not None else None
        if stored is not None and same_upload(mine.source, stored.source):
            # The same event delivered twice at once (no idempotency table): the other run
            # goes on importing this version.
            return Superseded("another invocation is importing this version")
        if stored is not None:
            why = "another import of this key took over (a newer upload replaced the file)"
            return Superseded(why, stored.source)
        manifest = self.existing_manifest()
        if manifest is not None and same_upload(mine.source, manifest.source):
            return Superseded("another delivery of this event imported the object meanwhile")
        return Superseded("another import of this key took over")

    def named_parts(self) -> set[str]:
        """The parts the stored checkpoint names, whoever wrote it (for a run that lost it)."""
        stored = self._stored()
        return set() if stored is None else {*stored[0].outcome_parts, *stored[0].retry_parts}

    def _stored(self) -> tuple[Checkpoint, str] | None:
        """The checkpoint S3 holds and its ETag, leaving this run's ETag as it was."""
        fetched = self._fetch(self.key)
        return None if fetched is None else (Checkpoint.model_validate_json(fetched[0]), fetched[1])

    def still_mine(self) -> bool:
        """Whether the checkpoint is still the one this run last read or wrote: no other import
        of the key has taken it over."""
        try:
            head = self.s3.head_object(Bucket=self._bucket, Key=self.key)
        except ClientError as exc:
            if aws_error_code(exc) in {"NoSuchKey", "404"}:
                return self._etag is None
            raise
        return head["ETag"] == self._etag

    def existing_manifest(self) -> Manifest | None:
        fetched = self._fetch(self._results + MANIFEST_NAME)
        if fetched is None:
            return None
        body = fetched[0]
        try:
            return Manifest.model_validate_json(body)
        except ValueError:
            return None

    def record_superseded(self, manifest: Manifest) -> bool:
        """Write a superseded import's manifest, unless the key's manifest is another upload's
        that is not older: conditional on what was read, so that a newer import finishing
        meanwhile keeps its own. Its own final manifest replaces this one in turn (the bucket's
        versioning keeps it). True when written."""
        key = self._results + MANIFEST_NAME
        condition: dict[str, str] = {"IfNoneMatch": "*"}
        try:
            response = self.s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if aws_error_code(exc) not in {"NoSuchKey", "404"}:
                raise
        else:
            try:
                current = Manifest.model_validate_json(response["Body"].read())
            except ValueError:
                current = None
            if current is not None and (
                # this upload's finished manifest (its state left behind): the whole report
                current.status != "superseded"
                if same_upload(manifest.source, current.source)
                # a newer import's, or one S3 gave no order for
                else not older_than(current.source, manifest.source)
            ):
                return False
            condition = {"IfMatch": response["ETag"]}
        try:
            self.s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=manifest.model_dump_json(indent=2),
                ContentType=JSON,
                **condition,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if aws_error_code(exc) in _LOST:
                return False  # a newer import wrote its manifest between the read and this
            raise
        return True

    def outcome_part_key(self, n: int) -> str:
        return outcome_part_key(self._results, self._run, n)

    def retry_part_key(self, n: int) -> str:
        return retry_part_key(self._retry, self._run, n)

    def delete(self, parts: list[str]) -> None:
        """Remove an import's part objects, then its checkpoint (the commit record) last,
        whoever wrote it: for a newer upload replacing an unfinished import of the key."""
        self.delete_parts([*parts, self.handoff_key])
        self.s3.delete_object(Bucket=self._bucket, Key=self.key)
        self._etag = self._handoff_etag = None

    def delete_parts(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})

    def finish(self, parts: list[str], stored: list[str] | None = None) -> None:
        """Remove this import's state once its results are written, while the checkpoint is
        still its own: its parts, those a run of it left when it died between storing a part and
        the checkpoint naming it (retry parts hold tokens), then the checkpoint itself.

        The parts are listed (``stored_parts``, or here when ``stored`` is None) before
        ownership is checked: a newer upload's import replaces the checkpoint before it stores
        any part, so none of its parts can be among those listed. The checkpoint goes only if
        unchanged (a conditional delete).
        """
        if stored is None:
            stored = self.stored_parts()
        if not self.still_mine():
            return  # another import took the key over; the state is its own now
        named = set(parts)
        self.delete_parts([*parts, *(k for k in stored if k not in named), self.handoff_key])
        try:
            self.s3.delete_object(Bucket=self._bucket, Key=self.key, IfMatch=self._etag or "*")
        except ClientError as exc:
            if aws_error_code(exc) not in _LOST:
                raise
        self._etag = None

    def stored_parts(self) -> list[str]:
        """Every part object of this key, whichever run of its imports stored it."""
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for prefix in (self._results + STATE_DIR, self._retry + STATE_DIR):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    # Only names parts take: another key's results may share the prefix.
                    name = obj["Key"].removeprefix(prefix)
                    if PART_NAME.fullmatch(name):
                        found.append(obj["Key"])
        return found

    def _fetch(self, key: str) -> tuple[bytes, str] | None:
        return fetch(self.s3, self._bucket, key)
