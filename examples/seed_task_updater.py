"""The TaskUpdater seed (task-updater.txt), verbatim but for the import line.

Run: ``python examples/seed_task_updater.py`` (takes ~14 s: the seed sleeps; ``make demo`` runs a
faster copy and prints the span tree).
"""

import logging
import time
import uuid

from otel_progress import TaskUpdater


# new format
def new_format_task(task_uuid, task_name, updater=None):

    # create instance
    updater = updater or TaskUpdater(task_uuid=task_uuid, task_name=task_name, verbose=1)

    # encapsulate the task with the context manager
    with updater(task_name=task_name):
        # here the code
        time.sleep(1)
        # notify something if you want
        updater.notify('Some notification related to the task')
        # more code
        time.sleep(1)

    # finally reraise latest exception if needed or not...
    updater.raise_latest_exception()  # in case of it is needed...


def new_format_task_1(uuid=uuid.uuid4(), name='TEST', verbose=1):

    updater = TaskUpdater(task_uuid=uuid, task_name=name, verbose=verbose)

    with updater(task_name=name + ' - First part'):
        # here some code
        time.sleep(1)
        updater.notify('Some notification related to the task')

    with updater(task_name=name + ' - Second part'):
        ##  here we call another method and we make sure we pass the updater
        my_task_2(updater=updater)

    updater.raise_latest_exception()  # in case of...or insert_final_update


def my_task_2(updater=None):

    with updater(task_name='My subtask 1 in my task 2'):
        # here some code
        time.sleep(1)
        updater.notify('Some notification related to the task')

    with updater(task_name='My subtask 2 in my task 2'):
        time.sleep(10)
        1/0  # raise exception
        updater.notify('Some notification related to the task')

    with updater(task_name='My subtask 3 in my task 2'):
        # here some code
        time.sleep(1)
        updater.notify('Some notification related to the task')


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    new_format_task(uuid.uuid4(), "TEST")
    try:
        new_format_task_1()
    except ZeroDivisionError as exc:
        print(f"raise_latest_exception() re-raised: {exc!r}")
