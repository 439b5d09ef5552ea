"""The names of the simulator's faults with what each does: plain data, so that
``batchgen simulate --help`` can list them without loading the simulator."""

from __future__ import annotations

CATALOGUE: dict[str, str] = {
    # creates and polls
    "http_500": "a create or poll answers 500 with a JSON error (a create makes no run)",
    "http_502_html": "a create or poll answers 502 with a proxy's HTML page",
    "http_503": "a create or poll answers 503 with an empty body",
    "slow": "the answer comes slow_seconds (--slow-seconds) late; a create makes its run first",
    "reset_after_create": "the run is made and billed, then the connection drops before the answer",
    "malformed_json": "create: the run is made, its answer is cut-off JSON; poll: cut-off JSON",
    "reset": "a poll's connection drops after the status line",
    "truncated": "a poll's or a file's body stops halfway (Content-Length promises more)",
    "echo_headers": "a 400/401/402/403/500 error body echoes the request's headers, Authorization included",
    "control_chars": "error text carries terminal escape sequences (per error answer; per run for failed runs)",
    # output files, per fetch
    "expire_first_fetch": "the first fetch of each output link answers 403 'link expired'",
    "redirect": "a file fetch answers 302 to a valid URL of the same file",
    "redirect_bad_scheme": "a file fetch answers 302 to file:// or ftp://",
    "body_html_login": "a file fetch answers 200 text/html: a sign-in page",
    "body_xml_error": "a file fetch answers 200 application/xml: a storage error document",
    "body_empty": "a file fetch answers 200 image/png with an empty body",
    "body_svg_script": "a file fetch answers 200 image/svg+xml holding a <script>",
    "body_huge": "a file fetch streams huge_body_bytes (--huge-body-mb) of PNG-looking data, no Content-Length",
    "body_bin": "a file fetch answers 200 application/octet-stream 'output.bin': bytes that are no image",
    "png_octet_stream": "a file fetch answers the real PNG labelled application/octet-stream (not a fault to refuse)",
    "body_cut_image": "a file fetch answers 200 with the first half of the PNG, Content-Length matching what is sent",
    "file_unavailable": "a file fetch answers 503: the storage host is down while the API is not",
    "file_rate_limited": "a file fetch answers 429 with Retry-After: 1, the file host's own limit (fetching that file "
    "again sooner counts in file_retry_after_violations)",
    "file_forbidden": "a file fetch answers 403 'access denied': the file host blocks this client, fresh links too",
    "file_gone": "a file fetch answers 404 or 410 (drawn per fetch): the file host lost every file, fresh links too",
    "later_output_gone": "a fetch of a run's second or later output answers 410: one image of several is dead",
    # per run
    "odd_run_id": "the run's id is one URL normalisation would break (., .., a/b, ?x, %2e, ...)",
    "not_found_after_create": "polls answer 404 for not_found_seconds (--not-found-seconds) after the create",
    "output_data_url": "the succeeded run's output URLs are data: URLs",
    "output_file_url": "the succeeded run's output URLs are file:// URLs",
    "no_output_urls": "the run succeeds without output URLs (empty list, no urls field, or output null)",
}
RUN_FAULTS = ("odd_run_id", "not_found_after_create", "output_data_url", "output_file_url", "no_output_urls")
# What a real service does off the happy path (runbase-api.md): answers a client must not take
# for the image, ids it must not let URL handling rewrite, text it must scrub before showing.
OFF_PATH_FAULTS = (
    "echo_headers", "control_chars", "body_html_login", "body_xml_error", "body_empty", "body_svg_script",
    "body_huge", "body_bin", "png_octet_stream", "body_cut_image", *RUN_FAULTS,
    "file_forbidden", "file_gone", "later_output_gone", "file_rate_limited",
)  # fmt: skip
# The network and server faults a client survives by retrying. Kept apart from OFF_PATH_FAULTS
# so that a random fault plan drawn from FAULTS keeps meaning what it meant before those existed.
FAULTS = tuple(name for name in CATALOGUE if name not in OFF_PATH_FAULTS)
ALL_FAULTS = tuple(CATALOGUE)
