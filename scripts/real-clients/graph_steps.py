"""Microsoft Graph through msgraph-sdk, configured as its documentation allows for another
base URL: a GraphRequestAdapter whose base_url is the simulator's /v1.0, and the Azure
identity authentication provider with 127.0.0.1 among its allowed hosts (it sends tokens
only there, and accepts plain http to loopback). The token credential is a small one of
our own against the simulator's client-credentials endpoint: azure-identity's
ClientSecretCredential refuses an authority that is not https."""

import datetime
import time

import httpx
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.location import Location
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.calendar_view.calendar_view_request_builder import (
    CalendarViewRequestBuilder,
)
from msgraph.generated.users.item.calendar_view.delta.delta_request_builder import (
    DeltaRequestBuilder,
)

from steps import check

ROOM = "room2@sim.example"
EWS_ROOM = "room1@sim.example"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CLIENT_STATE = "real-clients-state"
WINDOW = ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")


class SimulatorCredential:
    """An azure-core TokenCredential for the simulator's OAuth token endpoint
    (client credentials), caching each token until shortly before it expires."""

    def __init__(self, base, tenant="sim-tenant", client_id="sim-client", secret="sim-secret"):
        self.url = f"{base}/{tenant}/oauth2/v2.0/token"
        self.form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        self.cached = {}
        self.fetched = 0

    def get_token(self, *scopes, **kwargs):
        scope = " ".join(scopes)
        token = self.cached.get(scope)
        if token is None or token.expires_on - 30 < time.time():
            r = httpx.post(self.url, data={**self.form, "scope": scope})
            r.raise_for_status()
            body = r.json()
            token = AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))
            self.cached[scope] = token
            self.fetched += 1
        return token


def at(day, hour):
    return DateTimeTimeZone(date_time=f"2026-12-{day:02}T{hour:02}:00:00", time_zone="UTC")


def event(subject, day, hour):
    return Event(subject=subject, start=at(day, hour), end=at(day, hour + 1), location=Location(display_name="Room 2"))


def wait_graph(listener, what, match):
    return listener.wait(listener.graph, what, match)


def view_config(page_size):
    config = RequestConfiguration(
        query_parameters=CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(
            start_date_time=WINDOW[0], end_date_time=WINDOW[1]
        )
    )
    config.headers.add("Prefer", f"odata.maxpagesize={page_size}")
    return config


def delta_config(page_size):
    config = RequestConfiguration(
        query_parameters=DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
            start_date_time=WINDOW[0], end_date_time=WINDOW[1]
        )
    )
    config.headers.add("Prefer", f"odata.maxpagesize={page_size}")
    return config


async def run(runner, base, listener):
    s = runner.state
    credential = SimulatorCredential(base)

    def token():
        t = credential.get_token(GRAPH_SCOPE)
        check(t.token, "no token")
        left = t.expires_on - time.time()
        check(left > 60, f"expires in {left:.0f} s")
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=["127.0.0.1"])
        adapter = GraphRequestAdapter(auth)
        # Before the client is built: it takes its base URL from the adapter.
        adapter.base_url = f"{base}/v1.0"
        s["graph"] = GraphServiceClient(request_adapter=adapter)
        return f"client-credentials token for Graph, {left:.0f} s to live"

    await runner.step("graph token", token)

    async def user():
        client = runner.need("graph")
        got = await client.users.by_user_id(ROOM).get()
        check(got.mail == ROOM, f"mail {got.mail}")
        check(len(got.id) == 36, f"id {got.id}")
        s["user_id"] = got.id
        return f"GET /users/{ROOM}: object id {got.id}"

    await runner.step("graph user", user)

    async def subscribe():
        client = runner.need("graph")
        before = len(listener.validations)
        sub = await client.subscriptions.post(
            Subscription(
                change_type="created,updated,deleted",
                notification_url=listener.url("/graph"),
                resource=f"users/{ROOM}/events",
                expiration_date_time=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
                client_state=CLIENT_STATE,
            )
        )
        check(len(listener.validations) > before, "no validation handshake reached the listener")
        check(sub.id, "no subscription id")
        s["subscription"] = sub
        return f"subscription {sub.id} after the validation handshake (token echoed)"

    await runner.step("graph subscribe with the validation handshake", subscribe)

    async def book():
        client = runner.need("graph")
        created = await client.users.by_user_id(ROOM).events.post(event("Booked by msgraph", 2, 9))
        check(created.id, "no id")
        check(created.organizer.email_address.address == ROOM, f"organizer {created.organizer}")
        s["event"] = created
        return f"POST /users/{ROOM}/events → {created.id}"

    await runner.step("graph book a meeting (POST events)", book)

    def notified():
        created, sub = runner.need("event", "subscription")
        note = wait_graph(
            listener,
            "created notification",
            lambda n: n.get("changeType") == "created" and n.get("resourceData", {}).get("id") == created.id,
        )
        check(note.get("clientState") == CLIENT_STATE, f"clientState {note.get('clientState')!r}")
        check(note.get("subscriptionId") == sub.id, f"subscriptionId {note.get('subscriptionId')}")
        return f"created notification with clientState {CLIENT_STATE!r}"

    await runner.step("graph change notification with clientState", notified)

    async def paging():
        client = runner.need("graph")
        events = client.users.by_user_id(ROOM).events
        for day in range(3, 7):
            await events.post(event(f"Filler {day}", day, 10))
        page = await client.users.by_user_id(ROOM).calendar_view.get(request_configuration=view_config(2))
        subjects, pages = [e.subject for e in page.value], 1
        while page.odata_next_link:
            page = await client.users.by_user_id(ROOM).calendar_view.with_url(page.odata_next_link).get()
            subjects += [e.subject for e in page.value]
            pages += 1
        check(len(subjects) == 5, f"{len(subjects)} events: {subjects}")
        check(pages == 3, f"{pages} pages")
        return f"{len(subjects)} events over {pages} pages of 2 (@odata.nextLink followed)"

    await runner.step("graph calendarView paging", paging)

    async def delta_first():
        client = runner.need("graph")
        delta = client.users.by_user_id(ROOM).calendar_view.delta
        page = await delta.get(request_configuration=delta_config(2))
        seen = list(page.value)
        while page.odata_next_link:
            page = await delta.with_url(page.odata_next_link).get()
            seen += page.value
        check(len(seen) == 5, f"{len(seen)} events")
        check(page.odata_delta_link, "no @odata.deltaLink")
        s["delta_link"] = page.odata_delta_link
        return f"delta() round: {len(seen)} events, then a deltaLink"

    await runner.step("graph delta, first round", delta_first)

    async def delta_second():
        client, created, link = runner.need("graph", "event", "delta_link")
        moved = await client.users.by_user_id(ROOM).events.by_event_id(created.id).patch(
            Event(subject="Moved by msgraph", start=at(2, 14), end=at(2, 15))
        )
        check(moved.subject == "Moved by msgraph", f"subject {moved.subject}")
        page = await client.users.by_user_id(ROOM).calendar_view.delta.with_url(link).get()
        changed = [(e.id, e.subject) for e in page.value]
        check(changed == [(created.id, "Moved by msgraph")], f"changes {changed}")
        wait_graph(
            listener,
            "updated notification",
            lambda n: n.get("changeType") == "updated" and n.get("resourceData", {}).get("id") == created.id,
        )
        return "PATCH the meeting; the next delta round holds only it; updated notification"

    await runner.step("graph delta, second round has only the change", delta_second)

    async def renew():
        client, sub = runner.need("graph", "subscription")
        wanted = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
        renewed = await client.subscriptions.by_subscription_id(sub.id).patch(
            Subscription(expiration_date_time=wanted)
        )
        check(renewed.expiration_date_time > sub.expiration_date_time, "not later")
        return f"PATCH /subscriptions/{sub.id}: expires {renewed.expiration_date_time:%H:%M:%S}"

    await runner.step("graph renew the subscription", renew)

    async def delete():
        client, created = runner.need("graph", "event")
        await client.users.by_user_id(ROOM).events.by_event_id(created.id).delete()
        wait_graph(
            listener,
            "deleted notification",
            lambda n: n.get("changeType") == "deleted" and n.get("resourceData", {}).get("id") == created.id,
        )
        return "DELETE the meeting; deleted notification"

    await runner.step("graph delete the meeting", delete)

    async def across():
        client = runner.need("graph")
        runner.need("ews_subscription")
        created = await client.users.by_user_id(EWS_ROOM).events.post(event("Booked by msgraph for EWS", 8, 9))
        # A REST id is the EWS id in URL-safe base64.
        ews_id = created.id.replace("-", "+").replace("_", "/")

        def match(notification):
            return any(
                type(e).__name__ == "CreatedEvent" and e.item_id is not None and e.item_id.id == ews_id
                for e in notification.events
            )

        listener.wait(listener.ews, "EWS CreatedEvent of the Graph booking", match)
        return f"a Graph booking in {EWS_ROOM} reached the exchangelib push subscription"

    await runner.step("graph booking pushed to the EWS subscriber", across)

    async def unsubscribe():
        client, sub = runner.need("graph", "subscription")
        await client.subscriptions.by_subscription_id(sub.id).delete()
        return f"DELETE /subscriptions/{sub.id}"

    await runner.step("graph delete the subscription", unsubscribe)
