"""The mastf Observer seed (mastf-progress-observer.rst), verbatim but for the import line.

``some_condition`` and ``so_something`` are left undefined in the seed; they are defined here so
the example runs. Run eagerly (no broker needed): ``python examples/seed_observer.py``.
"""

from celery import Celery, shared_task

from otel_progress import Observer

app = Celery("seed_observer")
app.conf.task_always_eager = True

some_condition = True


def so_something():
    return None


@shared_task(bind=True)
def my_shared_task(self, *args):
    observer = Observer(self)

    # set the current completion percentage
    observer.pos = 34
    # otherwise specify it directly
    observer.update("Some information...", current=34)

    # Let the observer increment the position itself
    observer.update("Further information...", increment=True, step=5)

    if not some_condition:
        # Fail should be called on the end of a non-successful task
        _, meta = observer.fail("Test not passed")
        # always return a result as it will be used within the frontend
        return meta.get("description")

    try:
        so_something()
    except Exception as err:
        _, meta = observer.exception(err, "An error occurred!")
        return meta.get("description")

    # You can also return the updated metadata directly
    status, meta = observer.success("Finished task!")
    return meta


if __name__ == "__main__":
    print(my_shared_task.apply().get())
