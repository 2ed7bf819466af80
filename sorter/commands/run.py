"""`facesort run`: sort a folder of photos into OUT/male, OUT/female and OUT/neither."""
import click

from . import EXIT_CODES, batch_option, model_option, reports_errors, threshold_option, whole_image_option
from ..console import RichEvents, make_events, print_table


@click.command(epilog=EXIT_CODES)
@click.argument("input_dir", metavar="INPUT", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@model_option
@threshold_option
@whole_image_option
@batch_option
@click.option("--report", type=click.Path(dir_okay=False),
              help="Where to write this run's CSV. Default: OUT/reports/facesort-run-DATE-TIME.csv.")
@click.option("--dry-run", is_flag=True, help="Classify and write the report, but copy nothing.")
@click.option("--verify", is_flag=True, help="Detect changed photos by content hash, not only size and mtime.")
@click.option("--rescan", is_flag=True, help="Classify every photo again, changed or not.")
@click.option("--reclassify", is_flag=True, help="Classify again photos sorted by another model or threshold.")
@click.option("--prune", is_flag=True, help="Remove the copies of photos deleted from INPUT.")
@click.option("--follow-links", is_flag=True, help="Follow symbolic links (each real file once).")
@reports_errors
def run(input_dir, out_dir, model_path, threshold, whole_image, batch_size, report, dry_run, verify, rescan,
        reclassify, prune, follow_links):
    """Sort the photos under INPUT into OUT/male, OUT/female (both, with both faces) and OUT/neither.

    INPUT is never modified. Copies keep their path relative to INPUT. Photos already sorted and unchanged are
    skipped. Every photo handled gets a row in this run's CSV; OUT/facesort-report.csv lists all of them.
    """
    from ..errors import Interrupted
    from ..inference import Classifier
    from ..sorting import RunOptions, StopOnSignals, sort_folder

    events = make_events()
    classifier = Classifier(model_path, threshold)
    mode = "whole-image" if whole_image else "face-aware"
    events.log(f"model {classifier.path} (sha256 {classifier.sha256[:12]}), threshold {classifier.threshold}, "
               f"{mode}, device cpu")
    opts = RunOptions(batch_size=batch_size, dry_run=dry_run, report=report, whole_image=whole_image, verify=verify,
                      rescan=rescan, reclassify=reclassify, prune=prune, follow_links=follow_links)
    try:
        with StopOnSignals() as stop:
            summary = sort_folder(input_dir, out_dir, classifier, opts, events, stop)
    except Interrupted as e:
        events.log(str(e))
        raise SystemExit(e.exit_code) from None
    finally:
        if isinstance(events, RichEvents):
            events.close()
    keys = ("new", "changed", "retried", "reclassified", "rescanned", "unchanged", "outdated", "failed", "skipped",
            "deleted", "sorted", "male", "female", "both", "neither")
    print_table("facesort run", [(k, summary.counts[k]) for k in keys] + [("report", summary.report)])
    raise SystemExit(summary.exit_code)
