<?php
// Prints, as JSON, what the load test needs from a site seeded by Moodle's generator:
// the target course (the testcourse_N with most enrolled users, as Moodle's test plan
// picks it), its first page and forum, the forum's discussions, the kit's exam quiz
// (if seeded), and the generated users. Exit 3 when the site is not seeded.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->dirroot . '/mod/forum/lib.php');

$courses = $DB->get_records_sql("
    SELECT c.id, c.shortname, COUNT(ue.id) AS enrolled
      FROM {course} c
 LEFT JOIN {enrol} e ON e.courseid = c.id
 LEFT JOIN {user_enrolments} ue ON ue.enrolid = e.id
     WHERE c.shortname LIKE 'testcourse\_%'
  GROUP BY c.id, c.shortname
  ORDER BY COUNT(ue.id) DESC, c.id DESC", [], 0, 1);
if (!$courses) {
    fwrite(STDERR, "not seeded: no testcourse_* course\n");
    exit(3);
}
$course = reset($courses);
\core\session\manager::set_user(get_admin());
$modinfo = get_fast_modinfo($course->id);
$pages = $modinfo->get_instances_of('page');
$forums = $modinfo->get_instances_of('forum');
if (!$pages || !$forums) {
    fwrite(STDERR, "not seeded: target course has no page or forum\n");
    exit(3);
}
$forumcm = reset($forums);
$forum = $DB->get_record('forum', ['id' => $forumcm->instance]);
$discussions = $DB->get_records('forum_discussions', ['forum' => $forum->id], 'id ASC', 'id, firstpost', 0, 200);
if (!$discussions) {
    fwrite(STDERR, "not seeded: forum has no discussion\n");
    exit(3);
}
$discussion = reset($discussions);
$quizcmid = null;
foreach ($modinfo->get_instances_of('quiz') as $cm) {
    if ($cm->name === 'Kit exam') {
        $quizcmid = (int)$cm->id;
    }
}
$users = $DB->count_records_select('user', "username LIKE 'tool\_generator\_%' AND deleted = 0");
echo json_encode([
    'course_id' => (int)$course->id,
    'course_shortname' => $course->shortname,
    'enrolled' => (int)$course->enrolled,
    'page_cmid' => (int)reset($pages)->id,
    'forum_cmid' => (int)$forumcm->id,
    'discussion_id' => (int)$discussion->id,
    'reply_post_id' => (int)$discussion->firstpost,
    // Each user iteration replies in one of these (see seed_discussions.php).
    'discussions' => array_values(array_map(fn($d) => ['discussion_id' => (int)$d->id,
        'reply_post_id' => (int)$d->firstpost], $discussions)),
    'quiz_cmid' => $quizcmid,
    'users' => ['prefix' => 'tool_generator_', 'count' => (int)$users],
], JSON_PRETTY_PRINT) . "\n";
