"""A running Label Studio as the place people review: a small client of its HTTP API.

Only what review needs, over Label Studio's documented REST API (``/api/projects``,
``/api/projects/{id}/import``, ``/api/tasks``): find or create a project, check its labeling
config, import tasks once each, and list the tasks with their annotations. The official SDK
(``label-studio-sdk``) pulls in OpenCV, NLTK and code generators and pins NumPy below the
version the rest of this project uses; a dozen requests over ``httpx`` avoid that.

Tokens: a personal access token (a JWT refresh token; exchanged at ``/api/token/refresh`` for
short-lived access tokens, renewed when one expires) or a legacy token (sent as ``Token ...``).
The token is read from the environment variable the config names and is never written to a log,
a table or a report; error messages name the variable, never the value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from molal_ray.config.review import ReviewConfig
from molal_ray.exceptions import ConfigError, ReviewError, ReviewServerError
from molal_ray.review.backend import ReviewProgress
from molal_ray.review.files import (
    ReviewItem,
    check_labelstudio_config,
    checked_labels,
    labelstudio_answers,
    labelstudio_config,
    labelstudio_tasks,
)

PAGE = 100  # tasks per page when listing a project
IMPORT_CHUNK = 500  # tasks per import request


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class LabelStudio:
    """One Label Studio server. ``token_source`` names where the token came from (for errors)."""

    def __init__(
        self,
        url: str,
        token: str,
        token_source: str = "the token",
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 1.0,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.token_source = token_source
        self.retries, self.backoff_s = retries, backoff_s
        self._token = token
        self._access: str | None = None
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    # -- requests ---------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        if not _is_jwt(self._token):
            return {"Authorization": f"Token {self._token}"}
        if self._access is None:
            got = self._send("POST", "/api/token/refresh", auth=False, json={"refresh": self._token})
            self._access = str(got["access"])
        return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; :class:`ReviewServerError` when the server cannot be
        reached (after ``retries`` tries with back-off), refuses the token or fails (5xx);
        :class:`ReviewError` for any other refusal, with the server's own words."""
        return self._send(method, path, auth=True, **kwargs)

    def _send(self, method: str, path: str, auth: bool, **kwargs: Any) -> Any:
        import httpx

        renewed = False
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self.http.request(method, path, headers=self._auth() if auth else None, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ReviewServerError(
                        f"Label Studio at {self.url}: cannot reach it ({type(exc).__name__}: {exc})"
                    ) from None
                time.sleep(self.backoff_s * 2**attempt)
                continue
            if r.status_code == 401 and auth and self._access is not None and not renewed:
                self._access, renewed = None, True  # the access token expired: renew it once
                continue
            if r.status_code in (401, 403):
                raise ReviewServerError(
                    f"Label Studio at {self.url} refused {self.token_source} ({r.status_code} on {method} {path})"
                )
            if r.status_code >= 500:
                if last:
                    raise ReviewServerError(
                        f"Label Studio at {self.url}: {method} {path} failed ({r.status_code}: {_detail(r)})"
                    )
                time.sleep(self.backoff_s * 2**attempt)
                continue
            if r.status_code >= 400:
                raise ReviewError(
                    f"Label Studio at {self.url}: {method} {path} was refused ({r.status_code}: {_detail(r)})"
                )
            return r.json() if r.content else None
        raise ReviewServerError(f"Label Studio at {self.url}: {method} {path}: no answer")  # pragma: no cover

    # -- projects and tasks -----------------------------------------------------------------
    def project_url(self, project: dict[str, Any]) -> str:
        return f"{self.url}/projects/{project['id']}"

    def find_project(self, project: str | int) -> dict[str, Any] | None:
        """The project of this id (an int) or title (the first with exactly that title)."""
        if isinstance(project, int):
            try:
                return dict(self.request("GET", f"/api/projects/{project}"))
            except ReviewServerError:
                raise
            except ReviewError:
                return None
        got = self.request("GET", "/api/projects", params={"title": project, "page_size": PAGE})
        found = [p for p in got.get("results", []) if p.get("title") == project]
        return dict(found[0]) if found else None

    def ensure_project(self, project: str | int, labels: Sequence[str]) -> dict[str, Any]:
        """The project, created with the labeling config of ``labels`` when no project has this
        title; an existing project's config is checked, never replaced."""
        found = self.find_project(project)
        if found is not None:
            check_labelstudio_config(
                str(found.get("label_config", "")),
                labels,
                f"Label Studio project {found.get('title')!r} ({self.project_url(found)})",
            )
            return found
        if isinstance(project, int):
            raise ReviewError(f"Label Studio at {self.url}: no project with id {project} (give a title to create one)")
        return dict(
            self.request("POST", "/api/projects", json={"title": project, "label_config": labelstudio_config(labels)})
        )

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project, with its data and annotations."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                got = self.request(
                    "GET",
                    "/api/tasks",
                    params={"project": project_id, "page": page, "page_size": PAGE, "fields": "all"},
                )
            except ReviewServerError:
                raise
            except ReviewError:
                if page == 1:
                    raise
                return out  # the last page went away (tasks deleted while listing)
            batch = got.get("tasks", []) if isinstance(got, dict) else got
            out += batch
            total = got.get("total", len(out)) if isinstance(got, dict) else len(out)
            if not batch or len(out) >= total:
                return out
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        for i in range(0, len(tasks), IMPORT_CHUNK):
            self.request("POST", f"/api/projects/{project_id}/import", json=tasks[i : i + IMPORT_CHUNK])
        return len(tasks)


def _detail(r: Any) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]


def token_from_env(cfg: ReviewConfig) -> str:
    """The access token from the environment variable ``review.token_env`` names."""
    token = os.environ.get(cfg.token_env)
    if not token:
        raise ConfigError(
            f"review.token_env: the environment variable {cfg.token_env!r} is not set (it should "
            "hold a Label Studio access token)"
        )
    return token


class LabelStudioReview:
    """``review.backend: label_studio``: a round's samples become tasks of one project (each
    sample once, whatever is pushed again), their labels are the reviewers' annotations."""

    def __init__(self, cfg: ReviewConfig, labels: Sequence[str], token: str | None = None) -> None:
        if cfg.url is None or cfg.project is None:
            raise ConfigError("review: backend 'label_studio' needs url and project")
        self.cfg = cfg
        self.labels = list(labels)
        client = LabelStudio(cfg.url, token or token_from_env(cfg), f"the token in ${cfg.token_env}", cfg.timeout_s)
        self.client = client
        self._project: dict[str, Any] | None = None
        self.where = cfg.url
        self.imported = 0  # tasks the last push created

    def project(self) -> dict[str, Any]:
        if self._project is None:
            assert self.cfg.project is not None
            self._project = self.client.ensure_project(self.cfg.project, self.labels)
            self.where = self.client.project_url(self._project)
        return self._project

    def push(self, name: str, items: Sequence[ReviewItem]) -> str:
        """Import the items not in the project yet (by sample id); returns the project's address."""
        project = self.project()
        have = {str((t.get("data") or {}).get("sample_id")) for t in self.client.tasks(int(project["id"]))}
        new = [it for it in items if it.sample_id not in have]
        if new:
            self.client.import_tasks(int(project["id"]), labelstudio_tasks(new, batch=name))
        self.imported = len(new)
        return self.where

    def pull(self, name: str, ids: Sequence[str]) -> ReviewProgress:
        """The reviewers' labels of these samples so far (every label checked; a label outside the
        label set is an error naming the task), and the samples they skipped."""
        project = self.project()
        wanted = set(ids)
        tasks = [
            t for t in self.client.tasks(int(project["id"])) if str((t.get("data") or {}).get("sample_id")) in wanted
        ]
        answers = labelstudio_answers(tasks, f"Label Studio project {self.where}")
        labels = checked_labels(
            [(sid, lab) for sid, lab, _ in answers], self.labels, None, False, f"Label Studio project {self.where}"
        )
        skipped = {sid for sid, lab, skip in answers if skip and sid not in labels}
        return ReviewProgress(labels, skipped)

    def close(self) -> None:
        self.client.close()
