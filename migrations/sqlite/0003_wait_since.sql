-- When a run's current question was put to the person. A message received before then
-- was typed without seeing the question, so it is not taken as the answer.
ALTER TABLE runs ADD COLUMN wait_since BIGINT;

-- Questions already waiting were asked before this column existed.
UPDATE runs SET wait_since = updated_at WHERE status = 'waiting' AND wait_person IS NOT NULL;
