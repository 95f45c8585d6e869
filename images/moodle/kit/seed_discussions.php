<?php
// Gives the load test's forum enough discussions (idempotent) that replies spread over
// them: with one discussion, every "reply post" step of every user lands in the same
// thread, which grows by thousands of posts over a long run and makes each later level
// slower than the last for a reason no real course has. Users pick a discussion at random.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->dirroot . '/mod/forum/lib.php');

$forumcmid = (int)($argv[1] ?? 0);
$wanted = max(1, (int)($argv[2] ?? 100));
$cm = get_coursemodule_from_id('forum', $forumcmid, 0, false, MUST_EXIST);
\core\session\manager::set_user(get_admin());
$have = $DB->count_records('forum_discussions', ['forum' => $cm->instance]);
if ($have >= $wanted) {
    echo "kit: ok: forum has {$have} discussions\n";
    exit(0);
}
$generator = (new testing_data_generator())->get_plugin_generator('mod_forum');
$adminid = get_admin()->id;
for ($i = $have + 1; $i <= $wanted; $i++) {
    $generator->create_discussion(['course' => $cm->course, 'forum' => $cm->instance, 'userid' => $adminid,
        'name' => "Load test discussion $i", 'message' => "Students reply here during the load test ($i)."]);
}
echo "kit: changed: forum has {$wanted} discussions (added " . ($wanted - $have) . ")\n";
