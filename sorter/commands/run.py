"""`facesort run`: sort a folder of photos into OUT/male, OUT/female and OUT/neither."""
import signal

import click

from . import (EXIT_CODES, batch_option, device_option, model_option, reports_errors, threshold_option,
               whole_image_option)
from ..console import RichEvents, make_events, print_table


@click.command(epilog=EXIT_CODES)
@click.argument("input_dir", metavar="INPUT", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@model_option
@threshold_option
@whole_image_option
@batch_option
@device_option
@click.option("--report", type=click.Path(dir_okay=False),
              help="Where to write this run's CSV. Default: OUT/reports/facesort-run-DATE-TIME.csv.")
@click.option("--dry-run", is_flag=True, help="Classify and write the report, but copy nothing.")
@click.option("--verify", is_flag=True, help="Detect changed photos by content hash, not only size and mtime.")
@click.option("--rescan", is_flag=True, help="Classify every photo again, changed or not.")
@click.option("--retry-failed", is_flag=True,
              help="Try again files that failed before, even unchanged (after installing a decoder, say).")
@click.option("--reclassify", is_flag=True, help="Classify again photos sorted by another model or threshold.")
@click.option("--prune", is_flag=True, help="Remove the copies of photos deleted from INPUT.")
@click.option("--follow-links", is_flag=True, help="Follow symbolic links (each real file once).")
@click.option("--chunk-size", default=128, show_default=True, type=click.IntRange(1),
              help="Photos committed together: a crash or a stop redoes at most this many.")
@click.option("--new-input", is_flag=True, help="Accept an INPUT other than the one OUT was sorted from (it moved).")
@click.option("--cluster", metavar="ADDRESS",
              help="Classify on a Ray cluster: ray://HEAD:10001, auto, or local:N (a new one of N workers here). "
                   "INPUT and the model must be at the same paths on every node.")
@reports_errors
def run(input_dir, out_dir, model_path, threshold, whole_image, batch_size, device, report, dry_run, verify, rescan,
        retry_failed, reclassify, prune, follow_links, chunk_size, new_input, cluster):
    """Sort the photos under INPUT into OUT/male, OUT/female (both, with both faces) and OUT/neither.

    INPUT is never modified. Copies keep their path relative to INPUT. Photos already sorted and unchanged are
    skipped, so a nightly run only classifies what is new. Every photo handled gets a row in this run's CSV;
    OUT/facesort-report.csv lists all of them. SIGINT/SIGTERM stop after the current chunk.
    """
    from ..placement import check_folders
    from ..state import OutputLock

    events = make_events()
    check_folders(input_dir, out_dir, report)
    try:
        with OutputLock(out_dir):  # a second run exits 4 here, before the slow imports and model load
            summary = _sort(input_dir, out_dir, model_path, threshold, device, events, batch_size=batch_size,
                            chunk_size=chunk_size, dry_run=dry_run, report=report, whole_image=whole_image,
                            verify=verify, rescan=rescan, retry_failed=retry_failed, reclassify=reclassify, prune=prune,
                            follow_links=follow_links, new_input=new_input, cluster=cluster)
    except KeyboardInterrupt:  # Ctrl-C while loading, or a second one: OUT is as safe as after a kill
        click.echo("facesort: interrupted at once; the next run finishes the work", err=True)
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        if isinstance(events, RichEvents):
            events.close()
    _print_summary(summary)
    raise SystemExit(summary.exit_code)


def _sort(input_dir, out_dir, model_path, threshold, device, events, **options):
    from ..inference import Classifier
    from ..sorting import RunOptions, StopOnSignals, sort_folder

    opts = RunOptions(**options)
    if opts.cluster:
        from ..cluster import import_ray

        if device == "cuda":
            raise click.UsageError("--cluster workers classify on their nodes' CPUs: --device cuda is for a local run")
        import_ray()  # without the extra, say how to install it before loading anything
    classifier = Classifier(model_path, threshold, opts.whole_image, device)  # --device cuda without one: exit 1
    events.log(f"model {classifier.path} (sha256 {classifier.sha256[:12]}), threshold {classifier.threshold}, "
               f"{opts.mode}")
    with StopOnSignals() as stop:
        summary = sort_folder(input_dir, out_dir, classifier, opts, events, stop)
    if summary.stopped_by:
        events.log(f"stopped by {signal.Signals(summary.stopped_by).name} after the current chunk; "
                   f"{summary.counts['remaining']} photos left for the next run")
    return summary


def _print_summary(summary):
    keys = ("new", "changed", "retried", "reclassified", "rescanned", "unchanged", "outdated", "failed",
            "failed_unchanged", "skipped", "deleted", "sorted", "male", "female", "both", "neither", "remaining")
    rows = [(k, summary.counts[k]) for k in keys] + [("report", summary.report)]
    print_table("facesort run", rows + ([("cumulative", summary.cumulative)] if summary.cumulative else []))
