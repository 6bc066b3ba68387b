"""`chextriev search`: similar cases for a list of studies on the PACS, one JSON line each.

    chextriev search --config server.toml --study-uids-file studies.txt [--store]
    chextriev search --config server.toml --study-date 20240101-20240131 [--modality CR DX]
        [--k 10] [--exclude-same-patient] [--view PA] [--sex F] [--age-min 40] [--finding X]
        [--out-file results.jsonl]

The same queries as ``POST /api/v1/search/by-reference`` (:mod:`server.reference`), for a
teaching-file or quality review: each study's frontal image is found by QIDO-RS, read from the
index when it holds it, else fetched with WADO-RS and embedded (never indexed), and searched.
With ``--store`` each study also gets its report (a DICOM SR) filed back with STOW-RS.

Settings are the server's (one configuration: ``--config FILE`` or ``CHEXTRIEV_CONFIG``, the
``CHEXTRIEV_*`` environment, these flags): the index, checkpoint and device, the PACS
(``pacs_url`` and its credentials), the pseudonymisation key, ``public_url`` (the result link in
each line and report).

Each line: ``study_uid``, the query instance (``series_uid``, ``instance_uid``, ``view``),
``read_from`` (``index`` or ``pacs``), the model's ``findings``, ``evidence`` (similar cases per
finding among the results), ``results`` (rank, catalog id, similarity, known and predicted
findings), ``result_url``, ``report`` (with ``--store``), ``timing_ms``; or ``study_uid`` and
``error`` (``code``, ``message``) for a study that cannot be searched (unknown, no frontal
image). Exit status 0 when every study was searched, 1 when some were not, 2 when nothing could
run (configuration, the PACS unreachable or refusing the credentials: the lines so far are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from chextriev.cli_options import add_device_option, add_out_file, add_precision_option
from chextriev.errors import ChextrievError

log = logging.getLogger(__name__)

#: The server settings this command takes as flags too (the rest come from the file or the
#: environment).
FLAG_SETTINGS = ("CHECKPOINT", "INDEX_DIR", "DB_URL", "DETECTOR", "PACS_URL", "PACS_TOKEN_FILE",
                 "PACS_USER", "PACS_PASSWORD_FILE", "PACS_CA_BUNDLE", "PSEUDONYM_KEY_FILE",
                 "PUBLIC_URL", "TORCH_THREADS")
K_DEFAULT, K_MAX = 10, 100
SEXES = ("F", "M")


def _k(text: str) -> int:
    value = int(text)
    if not 1 <= value <= K_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {K_MAX}, got {value}")
    return value


def _age(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 150:
        raise argparse.ArgumentTypeError(f"years from 0 to 150, got {value}")
    return value


def register(subparsers) -> None:
    from server.config import BY_KEY

    parser = subparsers.add_parser(
        "search", help="similar cases for studies on the PACS (one JSON line each; --store files "
                       "the reports)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the server's TOML configuration file (default: CHEXTRIEV_CONFIG, "
                             "else none)")
    studies = parser.add_argument_group("which studies (one of)")
    studies.add_argument("--study-uids-file", type=Path, default=None, metavar="FILE",
                         help="StudyInstanceUIDs, one a line (# comments)")
    studies.add_argument("--study-date", default=None, metavar="FROM-TO",
                         help="every study of a StudyDate range YYYYMMDD-YYYYMMDD (QIDO-RS; either "
                              "end may be open) holding an image of --modality")
    studies.add_argument("--modality", nargs="+", default=["CR", "DX"], metavar="M",
                         help="with --study-date: modalities searched for")
    search = parser.add_argument_group("the search (as the API's fields)")
    search.add_argument("--k", type=_k, default=K_DEFAULT, help="similar cases per study")
    search.add_argument("--exclude-same-patient", action=argparse.BooleanOptionalAction,
                        default=False, help="leave out images of the study's patient")
    search.add_argument("--view", default=None, help="only archived images of this view (PA, AP)")
    search.add_argument("--sex", default=None, type=str.upper, choices=SEXES, help="only F or M")
    search.add_argument("--age-min", type=_age, default=None, help="youngest age, years")
    search.add_argument("--age-max", type=_age, default=None, help="oldest age, years")
    search.add_argument("--finding", default=None,
                        help="only archived images with this finding (a class of the model)")
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=False,
                        help="file each study's report (a DICOM SR) into the study on the PACS")
    add_out_file(parser, help="write the JSON lines to FILE (default: standard output)")
    settings = parser.add_argument_group("server settings (override the configuration file)")
    for key in FLAG_SETTINGS:
        setting = BY_KEY[key]
        settings.add_argument(setting.flag, dest=setting.name, default=None,
                              type=int if setting.kind == "int" else str, metavar=setting.metavar,
                              help=f"{setting.help} (env {setting.env_var})")
    add_device_option(settings, default="cpu", help="torch device for the model")
    add_precision_option(settings)
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from server.config import BY_KEY, FROM_ENVIRONMENT, ConfigError, resolve_config

    given = {key: getattr(args, BY_KEY[key].name) for key in FLAG_SETTINGS}
    given.update(DEVICE=args.device, PRECISION=args.precision, LOAD="manual",
                 CONFIG_FILE=args.config if args.config is not None else FROM_ENVIRONMENT)
    values = resolve_config(given)
    if not values["INDEX_DIR"]:
        raise ConfigError("missing index_dir (--index-dir, CHEXTRIEV_INDEX_DIR or the "
                          "configuration file)")
    if not values["PACS_URL"]:
        raise ConfigError("missing pacs_url (--pacs-url, CHEXTRIEV_PACS_URL or the configuration "
                          "file): chextriev search reads the studies from the PACS")
    return values


def study_uids(args: argparse.Namespace, connection) -> list[str]:
    """The studies to search: the file's, or QIDO-RS's for the date range (instances of the
    modalities, their studies in the order found)."""
    from chextriev.io.dicomweb import DicomwebSource, read_uid_file

    if bool(args.study_uids_file) == bool(args.study_date):
        raise ChextrievError("give the studies: --study-uids-file FILE or --study-date FROM-TO "
                             "(one of them)")
    if args.study_uids_file:
        return read_uid_file(args.study_uids_file)
    source = DicomwebSource(connection.root, modalities=args.modality, study_date=args.study_date,
                            credentials=connection.credentials, ca_bundle=connection.ca_bundle)
    found: dict[str, None] = {}
    for record in source.iter_records():
        found.setdefault(str(record.meta["dicomweb"]["study"]), None)
    return list(found)


def _filters(args: argparse.Namespace, class_names) -> dict[str, Any]:
    from chextriev.errors import UnknownNameError

    filters: dict[str, Any] = {}
    if args.view:
        filters["view"] = args.view.strip().upper()
    if args.sex:
        filters["sex"] = args.sex
    if args.age_min is not None:
        filters["age_min"] = args.age_min
    if args.age_max is not None:
        filters["age_max"] = args.age_max
    if "age_min" in filters and "age_max" in filters and filters["age_min"] > filters["age_max"]:
        raise ChextrievError(f"--age-min {filters['age_min']} is above --age-max {filters['age_max']}")
    if args.finding:
        if args.finding not in class_names:
            raise UnknownNameError("finding", args.finding, class_names)
        filters["finding"] = args.finding
    return filters


def search_study(service, connection, study_uid: str, *, k: int, filters: dict, exclude_same_patient: bool,
                 store: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """One study's line (raises the errors of :mod:`server.reference`)."""
    from server import reference
    from server.results import (
        as_probabilities,
        findings_list,
        jsonable,
        known_findings,
        predicted_findings,
    )

    started = time.perf_counter()
    key = settings.get("PSEUDONYM_KEY")
    located = reference.locate(service, connection, study_uid, max_pixels=settings["MAX_PIXELS"],
                               pseudonym_key=key)
    timings = dict(located.timings)
    embedded = time.perf_counter()
    query = reference.query_embedding(service, located, timings)
    timings["embed"] = (time.perf_counter() - embedded) * 1000
    searched = time.perf_counter()
    exclude = reference.patient_keys(located, key) if exclude_same_patient else []
    hits = service.search_hits(query.embedding, k, filters=filters, exclude_patients=exclude,
                               exclude_ids=[located.indexed_id] if located.indexed_id is not None else None)
    hits, rows = service.rows_of_hits(hits, k)  # the rows read once, as the API does (their status in them)
    timings["search"] = (time.perf_counter() - searched) * 1000
    class_names = tuple(service.class_names)
    thresholds = service.finding_thresholds
    image = located.image
    result_url = reference.result_link(settings.get("PUBLIC_URL"), image)
    report = reference.similar_case_report(
        service, located, query, rows, k=k, result_url=result_url,
        parameters=tuple(f"{name}={value}" for name, value in filters.items()))
    line: dict[str, Any] = {
        "study_uid": image.study_uid, "series_uid": image.series_uid,
        "instance_uid": image.instance_uid, "view": image.view, "read_from": located.source,
        "indexed_id": located.indexed_id, "k": k, "filters": filters,
        "findings": findings_list(query.probabilities, class_names, thresholds) if class_names else [],
        "evidence": {f.name: f.similar for f in report.findings if f.similar},
        "results": [{"rank": rank, "id": int(hit.image_id), "similarity": round(float(hit.score), 4),
                     "view": row.get("view"), "known_findings": known_findings(row),
                     "predicted_findings": predicted_findings(
                         as_probabilities(row.get("probabilities"), class_names), class_names,
                         thresholds)}
                    for rank, (hit, row) in enumerate(zip(hits, rows), start=1)],
        "result_url": result_url,
    }
    if store:
        line["report"] = reference.file_report(connection, located, report)
    timings["total"] = (time.perf_counter() - started) * 1000
    line["timing_ms"] = {name: round(value, 1) for name, value in timings.items()}
    return jsonable(line)


def run(args: argparse.Namespace) -> int:
    from chextriev.errors import (
        NoFrontalImageError,
        SourceAuthError,
        SourceUnavailableError,
        StudyNotFoundError,
    )
    from server.config import pacs_connection
    from server.services import SearchService

    settings = _settings(args)
    connection = pacs_connection(settings)
    studies = study_uids(args, connection)
    log.info("%d stud%s to search on %s", len(studies), "y" if len(studies) == 1 else "ies",
             connection.root)
    service = SearchService(settings["CHECKPOINT"], settings["DB_URL"], settings["INDEX_DIR"],
                            detector=settings["DETECTOR"], device=settings["DEVICE"],
                            torch_threads=settings["TORCH_THREADS"], precision=settings["PRECISION"])
    service.load()
    if not service.ready:
        raise ChextrievError(f"the model and index could not be loaded: {service.error}")
    filters = _filters(args, service.class_names)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    failed = 0
    try:
        for study in studies:
            try:
                line = search_study(service, connection, study, k=args.k, filters=filters,
                                    exclude_same_patient=args.exclude_same_patient,
                                    store=args.store, settings=settings)
            except (SourceUnavailableError, SourceAuthError):
                raise  # every further study would fail the same way: stop (exit 2)
            except (StudyNotFoundError, NoFrontalImageError) as error:
                failed += 1
                code = "unknown_study" if isinstance(error, StudyNotFoundError) else "no_frontal_image"
                line = {"study_uid": study, "error": {"code": code, "message": str(error)}}
                if isinstance(error, NoFrontalImageError):
                    line["error"]["found"] = error.found
            except ChextrievError as error:
                failed += 1
                line = {"study_uid": study, "error": {"code": "failed", "message": str(error)}}
            out.write(json.dumps(line, allow_nan=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    log.info("%d of %d studies searched%s", len(studies) - failed, len(studies),
             ", reports filed" if args.store else "")
    return 1 if failed else 0
