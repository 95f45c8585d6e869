"""Who owns a site. `kit init` gives each site folder an identity (a random id, kept in
`.kit/<site>/identity.json`); every object the kit creates carries it as the label
`kit.site-id`, and the site's config folder on each machine records the folder that
manages it (`/etc/kit/<site>/owner.json`; on Kubernetes, the site's Secret).

A command from a folder whose id differs from the running site's, or from a folder other
than the recorded one, refuses before it changes anything and says which folder owns the
site. Only `kit adopt` moves a site to another folder (e.g. a new admin machine).
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kit.config import Site, write_private
from kit.errors import KitError

OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class Identity:
    id: str
    created: str

    @classmethod
    def new(cls) -> "Identity":
        return cls(id=uuid.uuid4().hex[:16], created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


@dataclass(frozen=True)
class Owner:
    """What the running site records about the folder that manages it."""

    site_id: str
    folder: str
    host: str

    @classmethod
    def of(cls, site: Site, identity: Identity) -> "Owner":
        return cls(site_id=identity.id, folder=str(site.site_dir), host=socket.getfqdn())

    def where(self) -> str:
        return f"{self.host}:{self.folder}" if self.host else self.folder

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Owner | None":
        try:
            data = json.loads(text)
            return cls(site_id=str(data["site_id"]), folder=str(data["folder"]), host=str(data.get("host", "")))
        except (ValueError, KeyError, TypeError):
            return None


def identity_file(site: Site) -> Path:
    return site.state_dir / "identity.json"


def load(site: Site) -> Identity | None:
    path = identity_file(site)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Identity(id=str(data["id"]), created=str(data.get("created", "")))
    except (ValueError, KeyError, TypeError):
        raise KitError(f"{path}: corrupt; restore it from a copy of this folder, or run `kit adopt` if this "
                       "folder manages the running site") from None


def save(site: Site, identity: Identity) -> None:
    write_private(identity_file(site), json.dumps(asdict(identity), indent=2) + "\n")


def ensure(site: Site) -> Identity:
    """This folder's identity, made once (by `kit init`, or the first `kit up` of a folder
    written by hand when no site of that name exists)."""
    found = load(site)
    if found is None:
        found = Identity.new()
        save(site, found)
    return found


@dataclass(frozen=True)
class Found:
    """What exists of a site name on one engine or cluster."""

    where: str                      # "this host", a machine name, a namespace
    objects: list[str]              # e.g. "container kit-moodle-db"
    site_ids: set[str]              # ids labelled on them ("" = an object without one)
    owner: Owner | None             # the recorded owner folder, if any


def check(site: Site, found: list[Found], *, command: str) -> None:
    """Refuse (one line, nothing changed) unless this folder owns what runs under its name."""
    existing = [f for f in found if f.objects]
    if not existing:
        return
    mine = load(site)
    owners = [f.owner for f in existing if f.owner is not None]
    owner_text = f" (managed from {owners[0].where()})" if owners else ""
    ids = set().union(*(f.site_ids for f in existing))
    example = existing[0].objects[0]
    if mine is None:
        raise KitError(f"site {site.name!r} already runs on {existing[0].where}{owner_text} and this folder has no "
                       f"identity for it: refusing `kit {command}`; run it from the folder that manages the site, "
                       "or take the site over here with `kit adopt`")
    if "" in ids or ids != {mine.id}:
        raise KitError(f"site {site.name!r} on {existing[0].where} belongs to another folder{owner_text}: refusing "
                       f"`kit {command}` ({example} is not this folder's); run it there, or choose another name "
                       "in site.yaml")
    for f in existing:
        if f.owner is not None and f.owner.site_id == mine.id and Path(f.owner.folder) != site.site_dir:
            raise KitError(f"site {site.name!r} is managed from {f.owner.where()}, not from {site.site_dir}: "
                           f"refusing `kit {command}`; if this folder is its new home, run `kit adopt` here")
