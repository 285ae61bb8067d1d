"""The PACS trigger: studies that become stable in the PACS are analysed before anyone asks.

Two ways in, both ending in cds.pacs.intake.accept_stable_study (filter, register, enqueue):
- push: Orthanc's Lua OnStableStudy callback (docker/orthanc/notify.lua) POSTs a StableStudy
  notification to /pacs/notifications (cds.pacs.blueprint), authenticated by a shared bearer token;
- pull: `cds pacs poll` follows Orthanc's /changes feed (cds.pacs.poller) from a cursor stored in
  the database, so nothing is missed while the service or the notification path was down.
Duplicates from either path (or both) collapse on the JobQueue's dedupe key.
"""
