"""Who may see, use and change which LoRA adapter (the tenancy model is in docs/security.md).

- Shared adapters belong to the operator: the files in the LoRA directory (or bucket) and uploads
  made with a key in GENSVC_ADMIN_KEYS. Every key sees and uses them; only admin keys replace or
  delete them. Without GENSVC_API_KEYS the one anonymous tenant is the admin.
- Private adapters belong to the key that uploaded them. Other keys get 404 as if they did not
  exist, for listing, reading, using, replacing and deleting alike.

Private adapters are stored as `{owner}.{name}` (owner: `key_` + 16 hex digits of the key's
hash, never the key itself), so two keys' adapters of the same name never collide. Names of that
shape are reserved: no upload may take one and none counts as shared. A request's `loras[].name`
is resolved private first, then shared; the accepted job names the stored adapter (its record
shows `{owner}.{name}` for a private one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from generative_service.jobs import owner_for_key
from generative_service.settings import Settings

Scope = Literal["shared", "private"]
_PRIVATE = re.compile(r"^key_[0-9a-f]{16}\.")


@dataclass(frozen=True)
class Visible:
    name: str  # as the caller names it
    stored: str  # as the store (and workers, and job records) name it
    scope: Scope


def is_admin(settings: Settings, owner: str) -> bool:
    if not settings.api_keys:
        return True  # no keys: a single tenant, who is the operator
    return owner in {owner_for_key(key) for key in settings.admin_keys}


def private_name(owner: str, name: str) -> str:
    return f"{owner}.{name}"


def is_reserved(name: str) -> bool:
    """True for names of the private-adapter shape (`key_<16 hex>.`)."""
    return _PRIVATE.match(name) is not None


def is_shared(stored: str) -> bool:
    return not is_reserved(stored)


def upload_target(settings: Settings, owner: str, name: str) -> Visible:
    """Where an upload of `name` by `owner` goes: shared for admins, else the owner's own."""
    if is_admin(settings, owner):
        return Visible(name, name, "shared")
    return Visible(name, private_name(owner, name), "private")


def visible(owner: str, stored_names: list[str]) -> list[Visible]:
    """The adapters `owner` may see: every shared one and its own private ones, by name."""
    mine = private_name(owner, "")
    out = [Visible(s, s, "shared") for s in stored_names if is_shared(s)]
    out += [Visible(s[len(mine) :], s, "private") for s in stored_names if s.startswith(mine)]
    return sorted(out, key=lambda item: (item.name, item.scope != "private"))


def resolve(owner: str, name: str, stored_names: list[str]) -> Visible | None:
    """What `name` means for `owner`: its private adapter, else the shared one, else None."""
    names = set(stored_names)
    if name.startswith(private_name(owner, "")) and name in names:  # a record's stored name
        return Visible(name[len(private_name(owner, "")) :], name, "private")
    if private_name(owner, name) in names:
        return Visible(name, private_name(owner, name), "private")
    if name in names and is_shared(name):
        return Visible(name, name, "shared")
    return None
