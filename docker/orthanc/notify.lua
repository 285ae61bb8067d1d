-- Orthanc -> CDS service: announce every stable MR study (the push half of the PACS trigger).
--
-- Orthanc calls OnStableStudy once a study has received no new instance for StableAge seconds.
-- We POST a small JSON summary (study + series tags, procedure codes) to the service's
-- /pacs/notifications endpoint with a shared bearer token; the service decides whether it is a
-- lumbar spine MRI, registers it and queues its analysis (idempotently: duplicates are harmless).
--
-- Configuration (environment of the Orthanc process; never hard-code the token here):
--   CDS_PACS_NOTIFY_URL    e.g. http://web:8080/pacs/notifications
--   CDS_PACS_NOTIFY_TOKEN  the same value as the service's CDS_PACS_NOTIFY_TOKEN
-- Enable with "LuaScripts": ["/etc/orthanc/notify.lua"] in orthanc.json.
--
-- A push can be lost (the service down, a network blip: Orthanc does not queue HttpPost calls),
-- so run `cds pacs poll` as well; it reads Orthanc's durable /changes feed from a stored cursor.

local notifyUrl = os.getenv('CDS_PACS_NOTIFY_URL')
local notifyToken = os.getenv('CDS_PACS_NOTIFY_TOKEN')
local ATTEMPTS = 2

-- Lua callbacks block Orthanc's Lua context: keep the call short (SetHttpTimeout: Orthanc >= 1.11).
if SetHttpTimeout then
  SetHttpTimeout(10)
end

local function text(value)
  if value == nil then
    return ''
  end
  return tostring(value)
end

local function procedureCodes(instanceId)
  -- Procedure codes live in the instance headers: one instance of the study is enough.
  local codes = {}
  if instanceId == nil then
    return codes
  end
  local tags = ParseJson(RestApiGet('/instances/' .. instanceId .. '/tags?simplify'))
  for _, name in ipairs({'ProcedureCodeSequence', 'RequestedProcedureCodeSequence'}) do
    local items = tags[name]
    if type(items) == 'table' then
      for _, item in ipairs(items) do
        if item['CodeValue'] ~= nil and item['CodingSchemeDesignator'] ~= nil then
          table.insert(codes, { scheme = text(item['CodingSchemeDesignator']), code = text(item['CodeValue']) })
        end
      end
    end
  end
  return codes
end

function OnStableStudy(studyId, tags, metadata)
  if notifyUrl == nil or notifyUrl == '' or notifyToken == nil or notifyToken == '' then
    print('cds notify: CDS_PACS_NOTIFY_URL or CDS_PACS_NOTIFY_TOKEN is not set; not notifying')
    return
  end
  local study = ParseJson(RestApiGet('/studies/' .. studyId))
  local main = study['MainDicomTags'] or {}
  local patient = study['PatientMainDicomTags'] or {}
  local series = {}
  local isMr = false
  local firstInstance = nil
  for _, s in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local t = s['MainDicomTags'] or {}
    if firstInstance == nil and s['Instances'] ~= nil then
      firstInstance = s['Instances'][1]
    end
    if text(t['Modality']) == 'MR' then
      isMr = true
    end
    table.insert(series, {
      modality = text(t['Modality']),
      seriesDescription = text(t['SeriesDescription']),
      bodyPartExamined = text(t['BodyPartExamined']),
      -- the instance count lets the service see a study that grew within a series
      instances = #(s['Instances'] or {}),
    })
  end
  if not isMr then
    return -- only MR studies can be lumbar spine MRIs; the service would ignore the rest anyway
  end
  local body = {
    event = 'StableStudy',
    studyInstanceUid = text(main['StudyInstanceUID']),
    pacsStudyId = studyId,
    patientId = text(patient['PatientID']),
    studyDate = text(main['StudyDate']),
    studyDescription = text(main['StudyDescription']),
    series = series,
  }
  local codes = procedureCodes(firstInstance)
  if codes[1] ~= nil then
    body['procedureCodes'] = codes -- an empty Lua table would be sent as {} rather than []
  end
  local headers = {
    ['Content-Type'] = 'application/json',
    ['Authorization'] = 'Bearer ' .. notifyToken,
  }
  -- keepStrings=true: PatientID '00123' and StudyDate '20260101' must stay strings.
  local payload = DumpJson(body, true)
  for attempt = 1, ATTEMPTS do
    local answer = HttpPost(notifyUrl, payload, headers)
    if answer ~= nil then
      print('cds notify: stable MR study ' .. studyId .. ' announced')
      return
    end
  end
  print('cds notify: announcing study ' .. studyId .. ' failed; `cds pacs poll` will pick it up')
end
