"""`echocxr dicom-listen`: a DICOM node (C-STORE SCP) that reports on the chest radiographs sent to it.

Views are grouped per study; once a study has been quiet for --quiet-s seconds its report is written as a
DICOM SR (in the same study, citing every view) to --out DIR/<StudyInstanceUID>.dcm and/or C-STOREd to
--forward HOST:PORT:AET. Ctrl-C stops listening and reports the studies already received (Ctrl-C again quits).
"""

from __future__ import annotations

import argparse
import sys

from echocxr.cli.report import add_decode_arguments
from echocxr.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ae-title", default="ECHOCXR", help="this node's AE title (default ECHOCXR)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default 11112)")
    p.add_argument("--forward", metavar="HOST:PORT:AET", help="C-STORE each SR to this node (e.g. a PACS)")
    p.add_argument("--out", metavar="DIR", help="write each SR to DIR/<StudyInstanceUID>.dcm")
    p.add_argument("--quiet-s", type=float, default=10.0, metavar="SECONDS",
                   help="a study is complete when its sender has hung up and no new view of it arrived for "
                        "this long (default 10)")
    p.add_argument("--allow-aet", nargs="+", metavar="AET", help="accept associations only from these calling AE "
                   "titles (default: any)")
    p.add_argument("--max-views", type=int, default=4, help="views of a study the report reads (default 4)")
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--model", help="model directory or 'builtin' (the default)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_decode_arguments(p)


def run(args: argparse.Namespace) -> int:
    import logging
    import time
    from pathlib import Path

    from echocxr.backbones.builtin import model_dir_or_builtin
    from echocxr.cli.report import decode_config_from_args, load_engine
    from echocxr.clinical.dicom_forward import check_ae_title, parse_peer
    from echocxr.clinical.dicom_node import NodeConfig, ReportNode
    from echocxr.clinical.record import describe_decoder, model_label

    if not args.forward and not args.out:
        raise UserError("nowhere to send reports: give --forward HOST:PORT:AET and/or --out DIR")
    if not 0 <= args.port <= 65535 or args.quiet_s < 0 or args.max_views < 1:
        raise UserError("--port must be in 0..65535, --quiet-s >= 0 and --max-views >= 1")
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --out {out_dir}: {exc.strerror or exc}") from None
    config = NodeConfig(ae_title=check_ae_title(args.ae_title, "--ae-title"), host=args.host, port=args.port,
                        quiet_s=args.quiet_s, out_dir=out_dir, forward=parse_peer(args.forward) if args.forward
                        else None, max_views=args.max_views,
                        allowed_aets=tuple(check_ae_title(a, "--allow-aet") for a in args.allow_aet or ()))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug dumps would show dataset contents
    args.model = model_dir_or_builtin(args.model)
    engine = load_engine(args.model, args)
    cfg = decode_config_from_args(engine, args).validate()
    decoder = describe_decoder(cfg)

    def write_report(images: list) -> tuple[str, str, list[str]]:
        gen = engine.generate([engine.encode(images, lang=args.lang)], cfg)[0]
        return gen.text, decoder, gen.warnings

    node = ReportNode(write_report, config, language=args.lang, model=model_label(args.model))
    try:
        node.start()
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                        "(another node there? choose another --port)") from None
    where = " and ".join(([f"--out {out_dir}"] if out_dir else []) + ([f"{config.forward}"] if config.forward else []))
    try:  # entered before the ready line: a Ctrl-C right after it is a clean stop too
        print(f"echocxr dicom-listen: {config.ae_title} on {args.host}:{node.port}, reports ({decoder}) to "
              f"{where}; Ctrl-C to stop", file=sys.stderr)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        n = node.pending()
        print("echocxr dicom-listen: stopping" + (f"; reporting {n} received studies first (Ctrl-C again to "
              "drop them)" if n else ""), file=sys.stderr)
    node.stop(flush=True)
    print(f"echocxr dicom-listen: stopped ({node.reports_done} reports delivered)", file=sys.stderr)
    return 0
