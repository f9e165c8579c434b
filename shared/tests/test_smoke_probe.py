"""The probe service end to end: HTTP → outbox → relay → broker → consumer → effect."""

from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import eventually, fetchval, reset_service, running, settings_for
from emeterai_testkit.probe import SERVICE, ProbeSent, ProbeSettings


async def test_message_flows_from_outbox_to_handler(servers: str) -> None:
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    async with running(SERVICE, settings) as h:
        async with unit_of_work(h.pool) as uow:
            for seq in range(50):
                uow.publish(ProbeSent(seq=seq))
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 50 FROM probe_effects"),
                         message="50 effects")
    assert await fetchval(settings, "SELECT count(DISTINCT seq) FROM probe_effects") == 50
    assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
