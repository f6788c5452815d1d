"""Every page carries a Content-Security-Policy whose nonce matches the page's inline scripts, no
page keeps an inline event handler, and X-Forwarded-Proto is trusted only when the operator says."""

from __future__ import annotations

import re
from pathlib import Path

from django.urls import reverse

from tests.test_deploy_settings import production_env, run_manage

REPO = Path(__file__).resolve().parent.parent


def test_pages_carry_a_csp_whose_nonce_the_inline_scripts_use(client_for, owner, project):
    client = client_for(owner)
    response = client.get(reverse("projects:task_edit", args=[project.pk]))
    policy = response["Content-Security-Policy"]
    assert "script-src 'self' 'nonce-" in policy and "frame-ancestors 'none'" in policy
    assert "object-src 'none'" in policy and "'unsafe-eval'" not in policy
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    scripts = re.findall(rb"<script([^>]*)>", response.content)
    inline = [attrs for attrs in scripts if b"src=" not in attrs]
    assert inline and all(f'nonce="{nonce}"'.encode() in attrs for attrs in inline)
    # A fresh nonce each response, so a stolen one is good for nothing.
    again = client.get(reverse("projects:task_edit", args=[project.pk]))["Content-Security-Policy"]
    assert again != policy


def test_no_template_has_an_inline_event_handler_or_a_script_without_nonce():
    offenders = []
    for path in (REPO / "templates").rglob("*.html"):
        text = path.read_text()
        if re.search(r"\son[a-z]+\s*=\s*[\"']", text):
            offenders.append(f"{path.name}: inline event handler")
        for attrs in re.findall(r"<script([^>]*)>", text):
            if "src=" not in attrs and "nonce=" not in attrs:
                offenders.append(f"{path.name}: inline script without nonce")
    assert offenders == []


def test_forwarded_proto_is_trusted_only_when_the_operator_opts_in():
    program = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    default = run_manage("shell", "-c", program, **production_env())
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip().splitlines()[-1] == "None"
    opted = run_manage(
        "shell", "-c", program, **production_env(DISTILLERY_TRUST_X_FORWARDED_PROTO="1")
    )
    assert "HTTP_X_FORWARDED_PROTO" in opted.stdout
