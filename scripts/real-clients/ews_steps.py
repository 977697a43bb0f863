"""EWS through exchangelib, configured as its documentation allows for a server that is
not Exchange Online's: an explicit service endpoint, HTTP Basic with the simulator's
service account, and impersonation of the room (the service account has no mailbox of its
own). One step also authenticates with an app-only OAuth token from the simulator's token
endpoint, handed to exchangelib as an access token (its own token URL is Microsoft's)."""

import datetime

import httpx
from exchangelib import (
    BASIC,
    IMPERSONATION,
    OAUTH2,
    UTC,
    Account,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
    Identity,
    OAuth2AuthorizationCodeCredentials,
    close_connections,
)
from exchangelib.items import SEND_TO_NONE
from exchangelib.recurrence import Recurrence, WeeklyPattern
from exchangelib.services import SendNotification
from oauthlib.oauth2 import OAuth2Token

from steps import check

ROOM = "room1@sim.example"
OAUTH_ROOM = "room3@sim.example"
USER = "sim-ews@sim.example"
PASSWORD = "sim-ews-password"
# A Tuesday, far from today, in the simulator's empty calendar.
START = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC)
WINDOW = (START - datetime.timedelta(days=1), START + datetime.timedelta(days=60))


def endpoint(base):
    return f"{base}/EWS/Exchange.asmx"


def in_view(account, item_id):
    return [i for i in account.calendar.view(*WINDOW) if i.id == item_id]


def wait_ews(listener, what, match):
    return listener.wait(listener.ews, what, match)


def event_for(kind, item_id):
    """A matcher for a notification holding a `kind` event (e.g. CreatedEvent) of item_id."""

    def match(notification):
        return any(
            type(e).__name__ == kind and e.item_id is not None and e.item_id.id == item_id
            for e in notification.events
        )

    return match


async def run(runner, base, listener):
    s = runner.state

    def auth_challenge():
        # No auth_type: exchangelib reads the scheme off the 401 challenge.
        config = Configuration(service_endpoint=endpoint(base), credentials=Credentials(USER, PASSWORD))
        account = Account(ROOM, config=config, autodiscover=False, access_type=IMPERSONATION)
        auth_type = account.protocol.auth_type
        close_connections()  # the next account builds its own protocol from its configuration
        check(auth_type == BASIC, f"picked {auth_type!r}, not basic")
        return "exchangelib picked basic from the simulator's WWW-Authenticate challenge"

    await runner.step("ews auth type from the challenge", auth_challenge)

    def open_calendar():
        config = Configuration(
            service_endpoint=endpoint(base), credentials=Credentials(USER, PASSWORD), auth_type=BASIC
        )
        account = Account(ROOM, config=config, autodiscover=False, access_type=IMPERSONATION)
        version = account.version
        calendar = account.calendar
        check(calendar.name == "Calendar", f"calendar is named {calendar.name!r}")
        s["account"] = account
        listener.ews_parser = SendNotification(protocol=account.protocol)
        return f"version {version.build} ({version.api_version}) guessed; GetFolder root and calendar: {calendar.name!r}"

    await runner.step("ews version and calendar (ConvertId, GetFolder)", open_calendar)

    def subscribe():
        account = runner.need("account")
        sid, watermark = account.calendar.subscribe_to_push(listener.url("/ews"), status_frequency=1)
        first = wait_ews(listener, "first status event", lambda n: n.subscription_id == sid)
        kinds = [type(e).__name__ for e in first.events]
        check(kinds == ["StatusEvent"], f"first push holds {kinds}")
        s["ews_subscription"] = sid
        return f"subscription {sid[:16]}…, first push a StatusEvent answered OK"

    await runner.step("ews push subscribe", subscribe)

    def book():
        account = runner.need("account")
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject="Booked by exchangelib",
            start=START,
            end=START + datetime.timedelta(hours=1),
            location="Room 1",
        )
        item.save(send_meeting_invitations=SEND_TO_NONE)
        check(item.id, "CreateItem returned no id")
        s["item"] = item
        return f"CreateItem → {item.id}"

    await runner.step("ews book a meeting (CreateItem)", book)

    def notified():
        item = runner.need("item")
        runner.need("ews_subscription")
        wait_ews(listener, "CreatedEvent of the meeting", event_for("CreatedEvent", item.id))
        return "CreatedEvent of the booked item pushed to the listener, answered OK"

    await runner.step("ews push notification of the booking", notified)

    def view():
        account, item = runner.need("account", "item")
        found = in_view(account, item.id)
        check(len(found) == 1, f"the view shows it {len(found)} times")
        check(found[0].subject == item.subject, f"subject {found[0].subject!r}")
        return f"FindItem CalendarView shows {found[0].subject!r} at {found[0].start}"

    await runner.step("ews view (FindItem CalendarView)", view)

    def fetch():
        account, item = runner.need("account", "item")
        [got] = list(account.fetch(ids=[item]))
        check(got.start == START, f"start {got.start}")
        check(got.location == "Room 1", f"location {got.location!r}")
        check(got.organizer.email_address == ROOM, f"organizer {got.organizer}")
        return f"GetItem: {got.subject!r}, {got.start}–{got.end}, organizer {got.organizer.email_address}"

    await runner.step("ews fetch (GetItem)", fetch)

    def sync_first():
        account, item = runner.need("account", "item")
        changes = list(account.calendar.sync_items())
        ours = [(kind, i.id) for kind, i in changes if getattr(i, "id", None) == item.id]
        check(ours == [("create", item.id)], f"changes {changes}")
        s["sync_state"] = account.calendar.item_sync_state
        return f"SyncFolderItems from scratch: {len(changes)} change(s), the booking as create"

    await runner.step("ews sync, first round (SyncFolderItems)", sync_first)

    def update():
        account, item = runner.need("account", "item")
        key = item.changekey
        item.start = START + datetime.timedelta(hours=2)
        item.end = START + datetime.timedelta(hours=3)
        item.save(update_fields=["start", "end"], send_meeting_invitations=SEND_TO_NONE)
        check(item.changekey != key, "the change key did not change")
        wait_ews(listener, "ModifiedEvent of the meeting", event_for("ModifiedEvent", item.id))
        return f"UpdateItem moved it to {item.start}; ModifiedEvent pushed"

    await runner.step("ews move the meeting (UpdateItem)", update)

    def sync_second():
        account, item, state = runner.need("account", "item", "sync_state")
        changes = list(account.calendar.sync_items(sync_state=state))
        check(len(changes) == 1, f"{len(changes)} changes: {changes}")
        kind, got = changes[0]
        check((kind, got.id) == ("update", item.id), f"change {kind} of {got.id}")
        check(got.start == item.start, f"start {got.start}")
        return f"SyncFolderItems from the last state: only the move ({got.start})"

    await runner.step("ews sync, second round has only the change", sync_second)

    def save_everything():
        account, item = runner.need("account", "item")
        item.subject = "Renamed by exchangelib"
        item.save(send_meeting_invitations=SEND_TO_NONE)  # no update_fields: every property
        [got] = list(account.fetch(ids=[item]))
        check(got.subject == item.subject, f"subject {got.subject!r}")
        check(got.start == item.start, f"start {got.start}")
        return f"UpdateItem of every property (unset ones deleted): {got.subject!r}"

    await runner.step("ews save every property (UpdateItem)", save_everything)

    def series():
        account = runner.need("account")
        master = CalendarItem(
            account=account,
            folder=account.calendar,
            subject="Weekly by exchangelib",
            start=START,
            end=START + datetime.timedelta(minutes=30),
            recurrence=Recurrence(
                pattern=WeeklyPattern(interval=1, weekdays=[START.isoweekday()]), start=START.date(), number=4
            ),
        )
        master.save(send_meeting_invitations=SEND_TO_NONE)
        occurrences = [i for i in account.calendar.view(*WINDOW) if i.subject == master.subject]
        check(len(occurrences) == 4, f"{len(occurrences)} occurrences")
        check({o.type for o in occurrences} == {"Occurrence"}, f"types {[o.type for o in occurrences]}")
        # Move the third occurrence (an exception now), delete the second.
        third = occurrences[2]
        third.start += datetime.timedelta(hours=4)
        third.end += datetime.timedelta(hours=4)
        third.save(update_fields=["start", "end"], send_meeting_invitations=SEND_TO_NONE)
        occurrences[1].delete(send_meeting_cancellations=SEND_TO_NONE)
        after = [i for i in account.calendar.view(*WINDOW) if i.subject == master.subject]
        check(len(after) == 3, f"{len(after)} occurrences after the delete")
        check([o.type for o in after].count("Exception") == 1, f"types {[o.type for o in after]}")
        [fresh] = list(account.fetch(ids=[master]))
        check(fresh.type == "RecurringMaster", f"master type {fresh.type}")
        check(len(fresh.deleted_occurrences or []) == 1, f"deleted {fresh.deleted_occurrences}")
        check(len(fresh.modified_occurrences or []) == 1, f"modified {fresh.modified_occurrences}")
        wait_ews(listener, "ModifiedEvent of the master", event_for("ModifiedEvent", master.id))
        return "a weekly series of 4: one occurrence moved (exception), one deleted; the master lists both"

    await runner.step("ews recurring series", series)

    def delete():
        account, item = runner.need("account", "item")
        item_id = item.id  # exchangelib forgets the id of an item it deleted
        item.delete(send_meeting_cancellations=SEND_TO_NONE)
        wait_ews(listener, "DeletedEvent of the meeting", event_for("DeletedEvent", item_id))
        check(not in_view(account, item_id), "still in the view")
        return "DeleteItem; DeletedEvent pushed; gone from the view"

    await runner.step("ews delete the meeting (DeleteItem)", delete)

    def oauth():
        token = httpx.post(
            f"{base}/sim-tenant/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sim-client",
                "client_secret": "sim-secret",
                "scope": "https://outlook.office365.com/.default",
            },
        ).json()
        credentials = OAuth2AuthorizationCodeCredentials(
            access_token=OAuth2Token(
                {"access_token": token["access_token"], "token_type": "Bearer", "expires_in": token["expires_in"]}
            ),
            # App-only tokens must impersonate a mailbox on every call, the version probe too.
            identity=Identity(primary_smtp_address=OAUTH_ROOM),
        )
        config = Configuration(service_endpoint=endpoint(base), credentials=credentials, auth_type=OAUTH2)
        account = Account(OAUTH_ROOM, config=config, autodiscover=False, access_type=IMPERSONATION)
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject="Booked with an app-only token",
            start=START,
            end=START + datetime.timedelta(hours=1),
        )
        item.save(send_meeting_invitations=SEND_TO_NONE)
        check(len(in_view(account, item.id)) == 1, "not in the view")
        return f"app-only bearer token: calendar opened and {item.id} booked in {OAUTH_ROOM}"

    await runner.step("ews with an OAuth app-only token", oauth)
